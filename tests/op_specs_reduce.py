"""The op-spec table's entries for needle.ops.ops_reduce (issue 16); see op_specs.py."""

SPECS: list = []
