"""The conformance kit: the primitive table's cases, shared by the test suite and the tool.

    needle.conformance.cases   the cases of every row, generated from the table
    needle.conformance.calls   calling a backend's primitives by the table's parameters
    needle.conformance.check   `needle check-backend` (report.py, speed.py, worker.py)

`import needle` does not import it.
"""
