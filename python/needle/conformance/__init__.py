"""The conformance kit: the primitive table's cases, shared by the test suite and the tool.

    needle.conformance.cases   the cases of every row, generated from the table
    needle.conformance.calls   calling a backend's primitives by the table's parameters

`import needle` does not import it.
"""
