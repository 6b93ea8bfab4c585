"""What a notebook cell shows, as the user sees it, for comparing two executions of a notebook."""
from __future__ import annotations


def merged(outputs) -> list[tuple]:
    """Consecutive stream outputs of one name read as one text (how the kernel splits them into
    messages is timing); displays and results by their MIME data; errors by name and value."""
    out: list[tuple] = []
    for o in outputs:
        if o.output_type == "stream":
            if out and out[-1][:2] == ("stream", o.name):
                out[-1] = ("stream", o.name, out[-1][2] + o.text)
            else:
                out.append(("stream", o.name, o.text))
        elif o.output_type in ("display_data", "execute_result"):
            out.append((o.output_type, dict(o.data)))
        else:
            out.append((o.output_type, o.get("ename"), o.get("evalue")))
    return out
