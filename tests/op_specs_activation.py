"""The op-spec table's entries for needle.ops.ops_activation (issue 16); see op_specs.py."""

SPECS: list = []
