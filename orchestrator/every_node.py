"""Ask every live node of the Ray cluster the same question, each on that node itself.

The storage probes (can each node see --storage_path?) and the memory planner (each GPU node's cards, from its own
nvidia-smi) need an answer from every node, not from wherever Ray would schedule a task: each call is pinned to its
node and asks for no CPU, so it runs even while trials hold every core.
"""

from typing import Callable

NODE_TIMEOUT_S = 120  # a node that does not answer in this long fails the check that asked (ray.get's timeout)


def alive_nodes() -> list[dict]:
    """Ray's view of each node that is alive (ray.nodes() rows: NodeID, NodeManagerAddress, Resources)."""
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def ask_each_node(function: Callable, *args, nodes: list[dict] | None = None) -> list[tuple[dict, object]]:
    """(node, function(*args) as run on that node) for every node given (default: every live node), in order."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(function)
    nodes = alive_nodes() if nodes is None else nodes
    pending = [remote.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"],
                                                                                            soft=False)).remote(*args)
               for node in nodes]
    return list(zip(nodes, ray.get(pending, timeout=NODE_TIMEOUT_S)))


def blind_nodes(answers: list[tuple[dict, object]]) -> list[str]:
    """The addresses of the nodes that answered False (a probe they could not see)."""
    return [node["NodeManagerAddress"] for node, sees in answers if not sees]
