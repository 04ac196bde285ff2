"""Read report.html as a browser would hand it over: elements with classes, tables as cells (stdlib only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"meta", "br", "img", "input", "link", "hr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: "Element | None" = None
    children: list["Element"] = field(default_factory=list)
    text: str = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)

    def find(self, tag: str, *classes: str, id: str | None = None) -> list["Element"]:
        """Descendants with this tag (``*``: any), all of these classes, and this id."""
        out = []
        for child in self.children:
            if (tag in ("*", child.tag) and set(classes) <= child.classes
                    and (id is None or child.attrs.get("id") == id)):
                out.append(child)
            out += child.find(tag, *classes, id=id)
        return out

    def one(self, tag: str, *classes: str, id: str | None = None) -> "Element":
        found = self.find(tag, *classes, id=id)
        assert len(found) == 1, f"{len(found)} <{tag} class={classes} id={id}> found"
        return found[0]

    def rows(self) -> list[list["Element"]]:
        """A table's body rows, as lists of their cells."""
        return [[c for c in tr.children if c.tag in ("td", "th")] for tr in self.find("tr") if tr.parent.tag == "tbody"]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.text += data  # mixed content loses its order; enough to find words in a cell


def parse(html: str) -> Element:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def table_values(table: Element, column: int) -> list[str]:
    """The ``data-value`` (exact number) of one column, else its text."""
    return [row[column].attrs.get("data-value", row[column].all_text()) for row in table.rows()]
