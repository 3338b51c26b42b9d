"""The fence around the bittensor SDK's private parts (checked on bittensor 11.3.0). The SDK is imported inside the
function; publishing/subnet/bittensor_chain.py is the one adapter for the rest of the SDK (its public API)."""

from trainables.compat import gone, turned_off

BITTENSOR = "bittensor"
CHECKED = "11.3.0"


def error_catalog() -> dict[str, str]:
    """Every error the chain's runtime can return, by name -> its documentation ("" where it has none), as the SDK
    generated them from the runtime's metadata (405 in bittensor 11.3), in the SDK's order.

    Relies on `bittensor._generated.errors.ERRORS` (bittensor 11.3: {(pallet index, error index): ErrorInfo(pallet,
    name, docs)}; the SDK has no public catalog). Where it is gone: {} and one line, once, saying chain errors are then
    named only where the chain's message names them recognizably (no explanation from the catalog): the miner still
    publishes; its error lines are less helpful.
    """
    try:
        from bittensor._generated.errors import ERRORS

        catalog: dict[str, str] = {}
        for info in ERRORS.values():  # a name in several pallets: its last documentation
            catalog[info.name] = info.docs or catalog.get(info.name, "")
        return catalog
    except (ImportError, AttributeError):
        turned_off(gone(BITTENSOR, "bittensor._generated.errors.ERRORS (with .name and .docs)", CHECKED,
                        "chain errors are no longer explained from the SDK's catalog, only named where the chain's "
                        "message names them"))
        return {}
