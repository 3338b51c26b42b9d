"""The fence around transformers' private parts (checked on transformers 5.25.0). transformers is not imported here:
the functions read the objects they are given."""

from trainables.compat import missing

TRANSFORMERS = "transformers"
CHECKED = "5.25.0"


def attention_implementation(model_or_config) -> str | None:
    """The attention a model computes with ("sdpa", "eager", "flash_attention_2", "flex_attention", or a registered
    one such as the project's varlen kernel): `model.config`'s, or the config's itself when given a config (None for
    a config that names none: one made without `attn_implementation=`, not loaded into a model).

    Relies on `PretrainedConfig._attn_implementation` (transformers 5.25: set from `attn_implementation=` at load
    and by the public `model.set_attn_implementation`, which has no public getter). Where it is gone:
    MissingInternal (loud): the trial's batch layout and its packing check depend on the attention, and guessing it
    would train on a different loss, silently.
    """
    config = getattr(model_or_config, "config", model_or_config)
    try:
        attention = config._attn_implementation
    except AttributeError:
        attention = ...
    if not (attention is None or isinstance(attention, str)):
        raise missing(TRANSFORMERS, f"{type(config).__name__}._attn_implementation", CHECKED,
                      f"cannot tell which attention the model computes with; install transformers {CHECKED}")
    return attention
