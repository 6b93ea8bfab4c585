/**
 * The graphs nbbuild draws in a notebook's outputs (the live build view of `%build --graph`, the
 * dashboard: inline SVG in widget HTML) get zoom and pan where they are bigger than the output
 * area, and a collapsed rule (`fit ×14`) expands on click: the kernel side draws the notebook's
 * graph again with that rule's calls one by one. Without the extension they stay as drawn.
 */
import { NotebookPanel } from '@jupyterlab/notebook';

import { Connection, IGraphNode } from './connection';
import { Zoom } from './zoom';

const GRAPHS = '.nbbuild-progress svg, .nbbuild-dashboard svg';

export function enhanceGraphs(panel: NotebookPanel, connection: Connection): () => void {
  const seen = new WeakSet<SVGSVGElement>();
  const look = () => {
    for (const svg of panel.content.node.querySelectorAll<SVGSVGElement>(GRAPHS)) {
      if (!seen.has(svg) && svg.querySelector('g.node') && svg.parentElement) {
        seen.add(svg);
        enhance(svg, connection);
      }
    }
  };
  const observer = new MutationObserver(look);
  observer.observe(panel.content.node, { childList: true, subtree: true });
  look();
  return () => observer.disconnect();
}

function enhance(svg: SVGSVGElement, connection: Connection): void {
  const frame = svg.parentElement as HTMLElement;
  frame.style.overflow = 'hidden';
  const zoom = new Zoom(frame);
  zoom.show(svg);
  let expand: string[] = [];
  frame.addEventListener('click', async e => {
    const g = (e.target as Element).closest('g.node');
    const text = g?.querySelector('text')?.textContent ?? '';
    const group = / ×[\d,]+$/.exec(text) ? text.replace(/ ×[\d,]+$/, '') : null;
    if (!group || !connection.connected) {
      return;
    }
    // the collapsed node's rule: its label is `name ×n`, its tasks' keys begin `rule/`
    const reply = await connection.request('graph', { expand });
    const nodes: IGraphNode[] = Object.values(reply.nodes ?? {});
    const rule = nodes.find(n => n.group && n.label.startsWith(group + ' ×'))?.group;
    if (!rule) {
      return;
    }
    expand = [...expand, rule];
    const drawn = await connection.request('graph', { expand });
    if (drawn.svg) {
      const el = zoom.show(drawn.svg);
      el?.setAttribute('data-expanded', expand.join(' '));
    }
  });
}
