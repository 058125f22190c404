"""The docs that are generated from code stay in step with it."""

from pathlib import Path

from needle.backend_ndarray import primitives

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_primitives_md_is_the_table():
    text = (DOCS / "primitives.md").read_text()
    assert primitives.markdown_table() in text, (
        "docs/primitives.md is stale: python -m needle.backend_ndarray.primitives > "
        "docs/primitives.md"
    )


def test_every_primitive_is_in_the_docs_table():
    text = (DOCS / "primitives.md").read_text()
    for prim in primitives.TABLE.values():
        assert f"`{prim.signature}`" in text
