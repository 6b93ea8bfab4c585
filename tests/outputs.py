"""What a notebook cell shows, as the user sees it, for comparing two executions of a notebook."""
from __future__ import annotations


def _kind(o) -> str:
    return o.get("output_type") or o.get("msg_type")


def view(o) -> str | None:
    """Which of nbbuild's displays an output is (build, graph, metrics, dashboard), or None."""
    if _kind(o) != "display_data":
        return None
    return ((o.get("metadata") or {}).get("nbbuild") or {}).get("view")


def is_build_view(o) -> bool:
    """The live build view's display: a widget whose plain-text form is the build's one line."""
    return view(o) == "build"


def merged(outputs) -> list[tuple]:
    """Consecutive stream outputs of one name read as one text (how the kernel splits them into
    messages is timing); a build view as its line; other displays and results by their MIME
    data; errors by name and value."""
    out: list[tuple] = []
    for o in outputs:
        kind = _kind(o)
        if kind == "stream":
            if out and out[-1][:2] == ("stream", o["name"]):
                out[-1] = ("stream", o["name"], out[-1][2] + o["text"])
            else:
                out.append(("stream", o["name"], o["text"]))
        elif is_build_view(o):
            out.append(("build view", o["data"]["text/plain"]))
        elif kind in ("display_data", "execute_result"):
            out.append((kind, dict(o["data"])))
        else:
            out.append((kind, o.get("ename"), o.get("evalue")))
    return out


def printed(outputs) -> str:
    """The cell's stdout with the text form of each of nbbuild's displays in its place: what a
    plain-text front end shows (what a terminal prints)."""
    return "".join(o["text"] if _kind(o) == "stream" else o["data"]["text/plain"] + "\n"
                   for o in outputs
                   if (_kind(o) == "stream" and o["name"] == "stdout") or view(o))
