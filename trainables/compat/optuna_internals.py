"""The fence around Optuna's private parts (checked on optuna 5.1.0). Optuna is imported by the caller, not here.

(Ray's OptunaSearch keeps its Optuna study and trials in private attributes of Ray's: those are Ray's, fenced in
trainables.compat.ray_internals.)
"""

from trainables.compat import missing

OPTUNA = "optuna"
CHECKED = "5.1.0"


def distribution_holds(distribution, value) -> bool:
    """Does the Optuna distribution `distribution` hold the parameter value `value` (in its external form, as a
    trial's `params` has it)? A categorical value outside its choices does not.

    Relies on `BaseDistribution._contains(internal_repr)` (Optuna 5.1; every distribution has it, Optuna has no
    public equivalent). Where it is gone: MissingInternal (loud): it decides whether a stored study's trials belong
    to this search space, and a study that mixed in trials of another space would mislead TPE for good.
    """
    contains = getattr(distribution, "_contains", None)
    if not callable(contains):
        raise missing(OPTUNA, f"optuna.distributions.{type(distribution).__name__}._contains", CHECKED,
                      "cannot check that a stored study's trials fit this search space; install optuna "
                      f"{CHECKED} or pass a new --study file")
    try:
        internal = distribution.to_internal_repr(value)
    except ValueError:  # a categorical value not among the choices
        return False
    return bool(contains(internal))
