"""The bittensor SDK adapter: call construction, record decoding, error wording, wallets, and the
whole Chain interface through the SDK's real client against an in-process substrate. No network,
except an opt-in round trip against a local subtensor node (LORA_SWEEP_LOCAL_SUBTENSOR=1)."""

import asyncio
import os
import shutil
import socket
import struct
import time
import uuid

import bittensor
import pytest
from bittensor import wallets
from bittensor._generated.calls import Call
from bittensor._transport.codec import RuntimeCodec
from bittensor.reads import Commitment as SdkCommitment
from bittensor.result import ChainError as SdkChainError
from bittensor.result import ExtrinsicResult, RpcConnectionError, RpcPolicyError
from bittensor.sp_core import Keypair

from publishing.subnet.bittensor_chain import (
    BittensorChain,
    build_set_commitment_call,
    commitment_info,
    decode_commitment,
    describe_chain_error,
    load_wallet,
    resolve_network,
)
from publishing.subnet.chain import ChainError, Commitment

# A ModelId as the publisher writes it for repo me/name: namespace:name:commit:hash:competition_id.
COMMIT_SHA = "0123456789abcdef0123456789abcdef01234567"
MODEL_HASH = "q5C9YxlJ1wL1kQ3yJm2rYh7Y1Wb3l0u2kq0aJH8dV+I="  # base64 of a sha256: 44 characters
MODEL_ID = f"me:name:{COMMIT_SHA}:{MODEL_HASH}:m1"
assert len(MODEL_HASH) == 44 and len(MODEL_ID.encode()) == 96
COMMITMENTS_PALLET = 18  # the Commitments pallet's index on subtensor (the SDK's error catalog agrees)


# --- a minimal runtime: just enough of subtensor's metadata to encode set_commitment ------------------
# The SDK composes calls from runtime metadata, which only a node serves. This builds a V14 metadata blob
# whose types mirror subtensor's: NetUid(u16), CommitmentInfo{fields: BoundedVec<Data>} where BoundedVec is
# a one-field wrapper around Vec, and Data with None, Raw0..Raw128 ([u8; N]) and the hash variants.

def _compact(n):
    if n < 1 << 6:
        return bytes([n << 2])
    if n < 1 << 14:
        return struct.pack("<H", (n << 2) | 1)
    return struct.pack("<I", (n << 2) | 2)


def _str(text):
    return _compact(len(text.encode())) + text.encode()


def _vec(items):
    return _compact(len(items)) + b"".join(items)


def _opt(value):
    return b"\x00" if value is None else b"\x01" + value


def _field(type_id, name=None):
    return _opt(name and _str(name)) + _compact(type_id) + _opt(None) + _vec([])


def _type(path, type_def):
    return _vec([_str(p) for p in path]) + _vec([]) + type_def + _vec([])


def _composite(fields):
    return b"\x00" + _vec(fields)


def _variants(variants):
    return b"\x01" + _vec([_str(n) + _vec(fs) + bytes([i]) + _vec([]) for n, fs, i in variants])


def build_commitments_metadata() -> bytes:
    types = []

    def add(path, type_def):
        types.append(_type(path, type_def))
        return len(types) - 1

    u8, u16 = add([], b"\x05\x03"), add([], b"\x05\x04")
    netuid = add(["subtensor_runtime_common", "NetUid"], _composite([_field(u16)]))
    arrays = {n: add([], b"\x03" + struct.pack("<I", n) + _compact(u8)) for n in range(129)}
    data_variants = [("None", [], 0)] + [(f"Raw{n}", [_field(arrays[n])], n + 1) for n in range(129)]
    data_variants += [(name, [_field(arrays[32])], 130 + i)
                      for i, name in enumerate(["BlakeTwo256", "Sha256", "Keccak256", "ShaThree256"])]
    data = add(["pallet_commitments", "types", "Data"], _variants(data_variants))
    vec_data = add([], b"\x02" + _compact(data))
    bounded = add(["bounded_collections", "bounded_vec", "BoundedVec"], _composite([_field(vec_data)]))
    info = add(["pallet_commitments", "types", "CommitmentInfo"], _composite([_field(bounded, "fields")]))
    call = add(["pallet_commitments", "pallet", "Call"],
               _variants([("set_commitment", [_field(netuid, "netuid"), _field(info, "info")], 0)]))
    runtime_call = add(["node_subtensor_runtime", "RuntimeCall"],
                       _variants([("Commitments", [_field(call)], COMMITMENTS_PALLET)]))
    runtime = add(["node_subtensor_runtime", "Runtime"], _composite([]))
    registry = _vec([_compact(i) + t for i, t in enumerate(types)])
    pallet = (_str("Commitments") + _opt(None) + _opt(_compact(call)) + _opt(None) + _vec([]) + _opt(None)
              + bytes([COMMITMENTS_PALLET]))
    extrinsic = _compact(runtime_call) + bytes([4]) + _vec([])
    return b"meta" + bytes([14]) + registry + _vec([pallet]) + extrinsic + _compact(runtime)


@pytest.fixture(scope="module")
def codec():
    return RuntimeCodec(build_commitments_metadata(), spec_version=1, transaction_version=1)


# --- call construction -----------------------------------------------------------------------------

def test_commitment_info_is_one_raw_field_of_the_exact_byte_length():
    info = commitment_info(MODEL_ID)
    assert info == {"fields": [[{"Raw96": MODEL_ID.encode()}]]}
    assert commitment_info("") == {"fields": [[{"Raw0": b""}]]}
    # N counts bytes, not characters
    assert list(commitment_info("é")["fields"][0][0]) == ["Raw2"]


def test_commitment_info_rejects_more_than_128_bytes():
    assert list(commitment_info("x" * 128)["fields"][0][0]) == ["Raw128"]
    with pytest.raises(ChainError, match="129 bytes.*at most 128"):
        commitment_info("x" * 129)
    with pytest.raises(ChainError, match="130 bytes"):
        commitment_info("é" * 65)


def test_the_sdk_call_builder_targets_commitments_set_commitment_with_netuid_and_raw_field():
    call = build_set_commitment_call(6, MODEL_ID)
    assert isinstance(call, Call)
    assert (call.module, call.function) == ("Commitments", "set_commitment")
    assert call.params == {"netuid": 6, "info": {"fields": [[{"Raw96": MODEL_ID.encode()}]]}}


def test_the_sdk_encoder_writes_the_scale_bytes_the_pallet_expects(codec):
    composed = codec.compose_call(*build_set_commitment_call(6, MODEL_ID))
    expected = (bytes([COMMITMENTS_PALLET, 0])        # pallet index, call index
                + struct.pack("<H", 6)                 # netuid: u16
                + _compact(1)                          # one field in the BoundedVec<Data>
                + bytes([96 + 1])                      # Data::Raw96 is variant 97
                + MODEL_ID.encode())                   # [u8; 96]
    assert composed.data == expected
    # The flat spelling (without the BoundedVec wrapper) encodes to the same bytes.
    flat = bittensor.calls.Commitments.set_commitment(netuid=6, info={"fields": [{"Raw96": MODEL_ID.encode()}]})
    assert codec.compose_call(*flat).data == expected
    decoded = codec.decode_call(composed.data)
    assert decoded["call_module"] == "Commitments" and decoded["call_function"] == "set_commitment"
    args = {a["name"]: a["value"] for a in decoded["call_args"]}
    assert args == {"netuid": 6, "info": {"fields": [{"Raw96": "0x" + MODEL_ID.encode().hex()}]}}


# --- decoding records ------------------------------------------------------------------------------

HEX = "0x" + MODEL_ID.encode().hex()


@pytest.mark.parametrize("record", [
    # what the v11 SDK's CommitmentOf storage decode gives (and client.read builds on)
    {"block": 4321, "deposit": 0, "info": {"fields": [{"Raw96": HEX}]}},
    # raw bytes in the Raw field
    {"block": 4321, "deposit": 0, "info": {"fields": [{"Raw96": MODEL_ID.encode()}]}},
    # the BoundedVec wrapper spelled out, as the classic SDK decoded it, with its ((bytes...),) tuples
    {"block": 4321, "deposit": 0, "info": {"fields": [[{"Raw96": (tuple(MODEL_ID.encode()),)}]]}},
    # a list of ints
    {"block": 4321, "deposit": 0, "info": {"fields": [{"Raw96": list(MODEL_ID.encode())}]}},
    # client.read("commitment", ...): the SDK's Commitment dataclass
    SdkCommitment(block=4321, deposit=bittensor.Balance.from_rao(0), data=MODEL_ID,
                  fields=[{"Raw96": HEX}]),
])
def test_decode_commitment_reads_every_record_shape(record):
    assert decode_commitment(record) == Commitment(block=4321, data=MODEL_ID)


def test_decode_commitment_of_no_record_is_none():
    assert decode_commitment(None) is None
    assert decode_commitment({}) is None
    assert decode_commitment({"block": 5, "deposit": 0, "info": {"fields": []}}) is None
    # a commitment with no Raw field (e.g. only a timelocked payload) holds no ModelId
    sealed = {"block": 5, "info": {"fields": [{"TimelockEncrypted": {"encrypted": "0x00", "reveal_round": 9}}]}}
    assert decode_commitment(sealed) is None


def test_decode_commitment_keeps_non_utf8_bytes_as_hex_like_the_sdk():
    record = {"block": 7, "info": {"fields": [{"Raw2": "0xfffe"}]}}
    assert decode_commitment(record) == Commitment(block=7, data="0xfffe")


def test_decode_commitment_takes_text_that_is_not_0x_hex_as_it_is():
    assert decode_commitment({"block": 7, "info": {"fields": [{"Raw4": "cafe"}]}}) == Commitment(7, "cafe")


def test_decode_commitment_of_an_empty_raw_field_is_an_empty_string():
    assert decode_commitment({"block": 7, "info": {"fields": [{"Raw0": "0x"}]}}) == Commitment(7, "")


# --- error wording ---------------------------------------------------------------------------------

HOTKEY = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


def test_not_registered_names_the_hotkey_subnet_and_fix():
    error = SdkChainError("Account is not allowed to make commitments to the chain", "AccountNotAllowedCommit")
    message = describe_chain_error(error, netuid=6, hotkey_ss58=HOTKEY)
    assert message == (f"hotkey {HOTKEY} is not registered on subnet 6 (AccountNotAllowedCommit); "
                       "register it with btcli subnets register --netuid 6")
    # found by name inside a plain message too
    assert "not registered" in describe_chain_error("Module error: Commitments.AccountNotAllowedCommit")


def test_space_limit_and_rate_limits_say_retry_later():
    space = describe_chain_error(SdkChainError("Space Limit Exceeded", "SpaceLimitExceeded"), netuid=6)
    assert "SpaceLimitExceeded" in space and "may be retried later" in space and "subnet 6" in space
    rate = describe_chain_error(SdkChainError("Transaction rate limit exceeded", "RateLimitExceeded"))
    assert "RateLimitExceeded" in rate and "may be retried later" in rate
    assert "may be retried later" in describe_chain_error("dispatch failed: CommitmentSetRateLimitExceeded")


def test_connection_failures_name_the_endpoint_and_the_flag():
    refused = RpcConnectionError("could not connect to any endpoint: [Errno 111] Connect call failed "
                                 "('127.0.0.1', 9944)")
    message = describe_chain_error(refused, endpoint="ws://127.0.0.1:9944")
    assert message == ("cannot reach the chain at ws://127.0.0.1:9944 (connection refused); start the node "
                       "or choose another endpoint with --subtensor.network (finney, test, local or ws://host:port)")
    assert "--subtensor.network" in describe_chain_error(ConnectionRefusedError(111, "Connection refused"),
                                                         endpoint="wss://x:443")
    policy = describe_chain_error(RpcPolicyError("RPC endpoint rate limited this source (HTTP 429)"),
                                  endpoint="wss://x:443")
    assert policy.startswith("wss://x:443 refused this machine's traffic") and "--subtensor.network" in policy


def test_other_chain_errors_carry_the_pallet_error_name():
    message = describe_chain_error(SdkChainError("Account passed too many additional fields to their commitment",
                                                 "TooManyFieldsInCommitmentInfo"))
    assert message.startswith("the chain refused the call: TooManyFieldsInCommitmentInfo")
    assert "Payment" in describe_chain_error(SdkChainError("Inability to pay some fees", "Payment"))
    assert describe_chain_error("something\nodd happened") == "chain call failed: something odd happened"
    assert describe_chain_error(ChainError("already worded")) == "already worded"


def test_every_description_is_one_line():
    errors = [SdkChainError("x\ny", "AccountNotAllowedCommit"), SdkChainError("a\nb", "SomethingElse"),
              RpcConnectionError("line one\nline two"), "multi\nline\nmessage" * 50]
    for error in errors:
        assert "\n" not in describe_chain_error(error, endpoint="ws://h:1")


# --- networks --------------------------------------------------------------------------------------

def test_resolve_network_uses_the_sdks_endpoints():
    assert resolve_network("finney") == bittensor.settings.NETWORKS["finney"]
    assert resolve_network("finney") == "wss://entrypoint-finney.opentensor.ai:443"
    assert resolve_network("test") == "wss://test.finney.opentensor.ai:443"
    assert resolve_network("local") == bittensor.settings.NETWORKS["local"]
    if not os.getenv("BT_CHAIN_ENDPOINT"):  # the SDK lets this variable move `local`
        assert resolve_network("local") == "ws://127.0.0.1:9944"
    assert resolve_network("ws://10.0.0.5:9944") == "ws://10.0.0.5:9944"
    assert resolve_network("wss://node.example:443") == "wss://node.example:443"


@pytest.mark.parametrize("bad", ["mainnet", "", "http://127.0.0.1:9944", "ws://", "127.0.0.1:9944"])
def test_resolve_network_rejects_anything_else_in_one_line(bad):
    with pytest.raises(ChainError) as info:
        resolve_network(bad)
    message = str(info.value)
    assert "finney, test, local" in message and "ws://" in message and "\n" not in message


# --- wallets ---------------------------------------------------------------------------------------

def _quiet(*_):
    """Swallows the mnemonic the SDK would otherwise print."""


@pytest.fixture
def no_prompt(monkeypatch):
    """Any attempt to ask for a password fails the test instead of waiting on a terminal."""
    def refuse(*args, **kwargs):
        raise AssertionError("tried to prompt for a password")
    monkeypatch.setattr("bittensor.keyfiles._prompt_password", refuse)


@pytest.fixture(scope="module")
def wallet_template(tmp_path_factory):
    """A wallet 'miner' with hotkey 'default' whose coldkey is encrypted, the usual setup. Encrypting
    takes seconds, so it is made once and copied for each test."""
    path = str(tmp_path_factory.mktemp("template") / "wallets")
    bittensor.Wallet("miner", "default", path).create_new_coldkey(coldkey_password="cold-secret",
                                                                  on_mnemonic=_quiet)
    wallets.new_hotkey("miner", "default", path, on_mnemonic=_quiet)
    return path


@pytest.fixture
def wallet_path(wallet_template, tmp_path, no_prompt):
    return shutil.copytree(wallet_template, tmp_path / "wallets")


def test_load_wallet_reads_the_hotkey_without_touching_the_locked_coldkey(wallet_path):
    wallet = load_wallet("miner", "default", wallet_path)
    assert isinstance(wallet, bittensor.Wallet)
    on_disk = wallets.list_wallets_detailed(wallet_path)[0].hotkeys[0].ss58
    assert wallet.hotkey.ss58_address == on_disk
    assert wallet.hotkey_file.is_encrypted() is False and wallet.coldkey_file.is_encrypted() is True


def test_load_wallet_without_the_hotkey_names_the_fix(wallet_path):
    with pytest.raises(ChainError) as info:
        load_wallet("miner", "other", wallet_path)
    message = str(info.value)
    assert message.startswith("wallet 'miner' has no hotkey 'other' at ")
    assert "btcli wallet new-hotkey --wallet miner" in message and "--wallet-hotkey other" in message


def test_load_wallet_without_the_coldkey_names_the_fix(tmp_path, no_prompt):
    path = str(tmp_path / "wallets")
    wallets.new_hotkey("hotonly", "default", path, on_mnemonic=_quiet)  # a hotkey but no coldkey at all
    with pytest.raises(ChainError) as info:
        load_wallet("hotonly", "default", path)
    assert "wallet 'hotonly' has no coldkey" in str(info.value)
    assert "btcli wallet new-coldkey --wallet hotonly" in str(info.value)
    with pytest.raises(ChainError, match="wallet 'nobody' has no coldkey"):
        load_wallet("nobody", "default", path)


def test_load_wallet_accepts_a_mining_machine_with_only_the_public_coldkey(wallet_path):
    os.remove(os.path.join(wallet_path, "miner", "coldkey"))
    assert load_wallet("miner", "default", wallet_path).hotkey.ss58_address


def test_an_encrypted_hotkey_is_opened_from_its_env_password_and_never_prompts(tmp_path, no_prompt, monkeypatch):
    path = str(tmp_path / "wallets")
    wallets.new_coldkey("enc", path, use_password=False, on_mnemonic=_quiet)
    locked = bittensor.Wallet("enc", "locked", path).create_new_hotkey(hotkey_password="hot-secret",
                                                                       on_mnemonic=_quiet)
    env_var = locked.hotkey_file.env_var_name()
    monkeypatch.delenv(env_var, raising=False)
    with pytest.raises(ChainError) as info:
        load_wallet("enc", "locked", path)
    assert "is encrypted" in str(info.value) and env_var in str(info.value)
    monkeypatch.setenv(env_var, "hot-secret")  # the SDK keeps these encoded; a plain password is refused
    with pytest.raises(ChainError, match="does not hold a password in the SDK's encoding"):
        load_wallet("enc", "locked", path)
    monkeypatch.delenv(env_var)
    locked.hotkey_file.save_password_to_env("hot-secret")  # the SDK's own way to store it
    try:
        assert load_wallet("enc", "locked", path).hotkey.ss58_address == locked.hotkeypub.ss58_address
    finally:
        os.unsetenv(env_var)  # set below os.environ by the SDK, so unset it the same way


# --- the Chain interface through the SDK's real client --------------------------------------------

class InProcessSubstrate:
    """A `bittensor.Substrate` that keeps state in memory and behaves like the Commitments pallet.

    Calls are composed by the SDK's real encoder (with the minimal metadata above) and decoded back
    when they are submitted, so what lands here is exactly what would go over the wire.
    """

    def __init__(self, codec, registered: dict[tuple[int, str], int], block: int = 1000):
        self.codec = codec
        self.registered = registered  # (netuid, hotkey) -> uid
        self.block = block
        self.storage: dict[tuple[int, str], dict] = {}
        self.submitted: list[dict] = []
        self.refuse_with: str | None = None  # a Commitments error name to fail the next submit with
        self.hang = False
        self.token_symbols = {}
        self.connects = 0

    def balance(self, rao, netuid=0):
        return bittensor.Balance(int(rao), netuid)

    async def connect(self):
        self.connects += 1

    async def close(self):
        pass

    async def block_number(self):
        if self.hang:
            await asyncio.sleep(3600)
        return self.block

    async def query(self, module, storage_function, params=None, block_hash=None):
        netuid, hotkey = params
        if (module, storage_function) == ("SubtensorModule", "Uids"):
            return self.registered.get((netuid, hotkey))
        if (module, storage_function) == ("Commitments", "CommitmentOf"):
            return self.storage.get((netuid, hotkey))
        raise SdkChainError(f"storage {module}.{storage_function} is not kept here")

    async def query_map(self, module, storage_function, params=None, block_hash=None):
        raise SdkChainError("no maps here")  # the SDK's connect() tolerates this for its token symbols

    async def compose(self, call):
        return self.codec.compose_call(*call)

    async def submit(self, call, keypair, *, nonce=None, period=None, wait_for_inclusion=True,
                     wait_for_finalization=True):
        payload = call.data
        signature = keypair.sign(payload)
        assert Keypair(ss58_address=keypair.ss58_address).verify(payload, signature)
        decoded = self.codec.decode_call(payload)
        args = {a["name"]: a["value"] for a in decoded["call_args"]}
        self.submitted.append({"signer": keypair.ss58_address, "call": decoded, "args": args})
        netuid = args["netuid"]
        name = self.refuse_with
        if name is None and (netuid, keypair.ss58_address) not in self.registered:
            name = "AccountNotAllowedCommit"
        if name is not None:
            self.refuse_with = None
            docs = next(i.docs for i in bittensor._generated.errors.ERRORS.values() if i.name == name)
            return ExtrinsicResult(success=False, message=docs, error=SdkChainError(docs, name))
        self.block += 1
        self.storage[(netuid, keypair.ss58_address)] = {"deposit": 0, "block": self.block, "info": args["info"]}
        return ExtrinsicResult(success=True, message="Success")


@pytest.fixture
def miner(wallet_path, monkeypatch, tmp_path):
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "symbols.json"))  # keep ~ untouched
    return load_wallet("miner", "default", wallet_path)


@pytest.fixture
def substrate(codec, miner):
    return InProcessSubstrate(codec, registered={(6, miner.hotkey.ss58_address): 17})


def test_commit_then_read_back_through_the_sdk(miner, substrate):
    chain = BittensorChain("local", 6, miner, substrate=substrate)
    assert chain.hotkey_ss58 == miner.hotkey.ss58_address
    assert chain.current_block() == 1000
    assert chain.is_registered(chain.hotkey_ss58) is True
    assert chain.is_registered(HOTKEY) is False
    assert chain.read_commitment(chain.hotkey_ss58) is None

    chain.set_commitment(MODEL_ID)

    (sent,) = substrate.submitted
    assert sent["signer"] == miner.hotkey.ss58_address  # signed by the hotkey, not the coldkey
    assert sent["signer"] != miner.coldkeypub.ss58_address
    assert sent["call"]["call_module"] == "Commitments" and sent["call"]["call_function"] == "set_commitment"
    assert sent["args"] == {"netuid": 6, "info": {"fields": [{"Raw96": HEX}]}}
    assert chain.read_commitment(chain.hotkey_ss58) == Commitment(block=1001, data=MODEL_ID)
    assert chain.current_block() == 1001
    assert substrate.connects == 1  # one connection, opened lazily and reused
    chain.close()
    assert chain.current_block() == 1001 and substrate.connects == 2  # closing is not the end of it


def test_a_bare_keypair_commits_too(codec):
    alice = Keypair.create_from_uri("//Alice")  # localnet dev keys carry no wallet files
    substrate = InProcessSubstrate(codec, registered={(1, alice.ss58_address): 0})
    chain = BittensorChain("ws://127.0.0.1:9944", 1, alice, substrate=substrate)
    assert chain.hotkey_ss58 == alice.ss58_address == HOTKEY
    chain.set_commitment(MODEL_ID)
    assert substrate.submitted[0]["signer"] == alice.ss58_address
    assert chain.read_commitment(HOTKEY) == Commitment(block=1001, data=MODEL_ID)


def test_a_refused_commit_raises_a_chain_error_a_miner_can_act_on(miner, substrate):
    chain = BittensorChain("local", 7, miner, substrate=substrate)  # registered on 6, not on 7
    assert chain.is_registered(chain.hotkey_ss58) is False
    with pytest.raises(ChainError) as info:
        chain.set_commitment(MODEL_ID)
    assert str(info.value) == (f"hotkey {chain.hotkey_ss58} is not registered on subnet 7 "
                               "(AccountNotAllowedCommit); register it with btcli subnets register --netuid 7")
    assert chain.read_commitment(chain.hotkey_ss58) is None

    chain = BittensorChain("local", 6, miner, substrate=substrate)
    substrate.refuse_with = "SpaceLimitExceeded"
    with pytest.raises(ChainError, match="SpaceLimitExceeded.*may be retried later"):
        chain.set_commitment(MODEL_ID)
    chain.set_commitment(MODEL_ID)  # the next one goes through
    assert chain.read_commitment(chain.hotkey_ss58).data == MODEL_ID


def test_an_oversized_commitment_fails_before_anything_is_sent(miner, substrate):
    chain = BittensorChain("local", 6, miner, substrate=substrate)
    with pytest.raises(ChainError, match="at most 128"):
        chain.set_commitment("x" * 129)
    assert substrate.submitted == [] and substrate.connects == 0


def test_a_silent_node_becomes_a_chain_error_after_the_timeout(miner, substrate):
    substrate.hang = True
    chain = BittensorChain("local", 6, miner, substrate=substrate, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ChainError, match=r"no answer from ws://\S+ within 0.5 s while reading the block height"):
        chain.current_block()
    assert time.monotonic() - started < 5
    substrate.hang = False
    assert chain.current_block() == 1000  # and the chain is usable again afterwards
    chain.close()


# --- real sockets ------------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_construction_is_lazy_and_a_closed_port_fails_fast(miner):
    endpoint = f"ws://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    chain = BittensorChain(endpoint, 1, miner, timeout=10)
    assert time.monotonic() - started < 1  # constructing never dials
    with pytest.raises(ChainError) as info:
        chain.current_block()
    assert time.monotonic() - started < 5
    assert str(info.value) == (f"cannot reach the chain at {endpoint} (connection refused); start the node or "
                               "choose another endpoint with --subtensor.network (finney, test, local or ws://host:port)")
    with pytest.raises(ChainError, match="connection refused"):
        chain.read_commitment(chain.hotkey_ss58)


def test_an_endpoint_that_accepts_but_never_answers_times_out(miner):
    with socket.socket() as server:  # accepts TCP connections, never completes the websocket handshake
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint = f"ws://127.0.0.1:{server.getsockname()[1]}"
        chain = BittensorChain(endpoint, 1, miner, timeout=1)
        started = time.monotonic()
        with pytest.raises(ChainError, match=f"no answer from {endpoint} within 1 s"):
            chain.is_registered(chain.hotkey_ss58)
        assert time.monotonic() - started < 5


# --- opt-in: a real local subtensor node ------------------------------------------------------------

LOCAL = os.getenv("LORA_SWEEP_LOCAL_SUBTENSOR") == "1"


@pytest.mark.skipif(not LOCAL, reason="set LORA_SWEEP_LOCAL_SUBTENSOR=1 (with a subtensor localnet on "
                    "ws://127.0.0.1:9944 and LORA_SWEEP_WALLET_NAME / LORA_SWEEP_WALLET_HOTKEY / "
                    "LORA_SWEEP_NETUID, optionally LORA_SWEEP_WALLET_PATH, naming a hotkey registered there) "
                    "to commit to a local node")
def test_commit_and_read_back_on_a_local_subtensor():
    wallet = load_wallet(os.getenv("LORA_SWEEP_WALLET_NAME", "default"),
                         os.getenv("LORA_SWEEP_WALLET_HOTKEY", "default"), os.getenv("LORA_SWEEP_WALLET_PATH"))
    netuid = int(os.getenv("LORA_SWEEP_NETUID", "1"))
    chain = BittensorChain("local", netuid, wallet)
    assert chain.is_registered(chain.hotkey_ss58), f"register {chain.hotkey_ss58} on subnet {netuid} first"
    data = f"me:name:{uuid.uuid4().hex.ljust(40, '0')}:{MODEL_HASH}:m1"  # unique, so the read-back proves it
    before = chain.current_block()
    chain.set_commitment(data)
    commitment = chain.read_commitment(chain.hotkey_ss58)
    assert commitment is not None and commitment.data == data
    assert commitment.block >= before
    chain.close()
