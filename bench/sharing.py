"""The sharing ops' part of a `python -m bench --full` CPU run: grouped and depthwise layers
(bench/groups.py) and the neighbour penalty and bank averaging (bench/neighbour.py) at their
own shapes, with the floors of the run's measured limits; their tables in the report, rated by
bench/report/targets.py."""
from bench import groups, neighbour

# alexnet_conv1's banks (55 x 55 positions of 96 x 3 x 11 x 11): the issue's penalty shape
ALEXNET_BANKS = (55, 55, 96, 3, 11, 11)


def sharing_ops(limits, repeat, step=None, conv_shapes=None, local_shapes=None,
                banks=ALEXNET_BANKS):
    """The sharing ops' tables of a --full run ({bench/report/schema.py SHARING name: [record]}):
    grouped and depthwise conv2d against PyTorch's grouped conv and grouped local2d beside the
    ungrouped layer (bench/groups.py), neighbour_penalty and average_banks on alexnet_conv1's
    banks (bench/neighbour.py); floors from this run's `limits`. The shapes default to those
    modules' tables and alexnet_conv1's banks (tests pass small ones)."""
    gbps, gflops = limits["read_gbps"], limits["sgemm_gflops"]
    conv_shapes = groups.CONV_SHAPES if conv_shapes is None else conv_shapes
    local_shapes = groups.LOCAL_SHAPES if local_shapes is None else local_shapes
    out = dict(groups_conv=groups.conv_records(conv_shapes, repeat, gbps, gflops, step),
               groups_local=groups.local_records(local_shapes, repeat, gbps, gflops, step))
    weight = neighbour.banks(banks)
    out["neighbour"] = neighbour.penalty_records(weight, repeat, gbps, progress=step)
    out["average"] = neighbour.average_records(weight, repeat, gbps, limits["copy_gbps"], step)
    return out


def sharing_steps(conv_shapes=None, local_shapes=None):
    """How many records (progress steps) sharing_ops makes with these shapes (the same
    defaults)."""
    conv_shapes = groups.CONV_SHAPES if conv_shapes is None else conv_shapes
    local_shapes = groups.LOCAL_SHAPES if local_shapes is None else local_shapes
    return (2 * (len(conv_shapes) + len(local_shapes))
            + 2 * len(neighbour.METRICS) * len(neighbour.NEIGHBOURHOODS)
            + len(neighbour.GROUPS_OF))


def sharing_tables(sharing, markdown=False):
    """The --full run's sharing-op tables (markdown tables in either form: they have many
    columns of text)."""
    if not sharing:
        return []
    head = "### " if markdown else ""
    return ["", f"{head}Grouped and depthwise conv2d against PyTorch's grouped conv (oneDNN), "
                "float32, timed in alternation (bench/groups.py):", "",
            *groups.conv_table(sharing["groups_conv"]), "",
            f"{head}Grouped local2d beside the same layer ungrouped, % of floor:", "",
            *groups.local_table(sharing["groups_local"]), "",
            f"{head}neighbour_penalty on banks {sharing['neighbour'][0]['banks']} float32, "
            "floor: the bytes over the read bandwidth (bench/neighbour.py):", "",
            *neighbour.penalty_table(sharing["neighbour"]), "",
            f"{head}average_banks into out= on the same banks:", "",
            *neighbour.average_table(sharing["average"])]
