"""The subnet's rules as numbers, each defined once (../shared/SUBNET.md)."""

BLOCK_SECONDS = 12                  # one block every 12 seconds
COMMIT_INTERVAL_BLOCKS = 100        # the chain takes one commitment per hotkey every 100 blocks
PUBLISH_INTERVAL_S = COMMIT_INTERVAL_BLOCKS * BLOCK_SECONDS  # the "20 minutes" between publishes
MAX_COMMITMENT_BYTES = 128          # a commitment (a ModelId string) is at most 128 bytes
VALIDATOR_EPSILON = 0.01            # the earlier model's loss counts 1% lower in iswin
VALIDATOR_EVAL_SAMPLES = 120        # samples validators draw per task of a reference_loss competition
