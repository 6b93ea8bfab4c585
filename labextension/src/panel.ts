/**
 * The side panel: the current notebook's task graph, as the kernel side draws it, redrawn after
 * every cell. Clicking a task scrolls to its cell and offers "why", "build" and "show value";
 * clicking a rule's collapsed calls (`fit ×14`) draws them one by one (and back).
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { Connection, IGraphNode } from './connection';
import { Zoom } from './zoom';

export class GraphPanel extends Widget {
  constructor() {
    super();
    this.id = 'nbbuild-panel';
    this.addClass('nbbuild-panel');
    this.title.caption = 'nbbuild: task graph';
    const head = document.createElement('div');
    head.className = 'nbbuild-panel-head';
    this.heading = document.createElement('span');
    this.heading.className = 'nbbuild-panel-title';
    head.appendChild(this.heading);
    const frame = document.createElement('div');
    this.zoom = new Zoom(frame, { plainWheel: true, fitHeight: true, toolsIn: head });
    frame.addEventListener('click', e => this.onClick(e));
    this.detail = document.createElement('div');
    this.detail.className = 'nbbuild-detail';
    this.node.append(head, frame, this.detail);
    this.show_('no notebook');
  }

  /** Follow this notebook (null: none is current). */
  follow(panel: NotebookPanel | null, connection: Connection | null): void {
    if (this.connection) {
      this.connection.changed.disconnect(this.onChanged, this);
    }
    this.notebook = panel;
    this.connection = connection;
    this.expand.clear();
    this.selected = null;
    this.detail.replaceChildren();
    if (connection) {
      connection.changed.connect(this.onChanged, this);
    }
    void this.refresh();
  }

  /** Draw the graph again (when visible). */
  async refresh(): Promise<void> {
    if (!this.isVisible) {
      this.stale = true;
      return;
    }
    this.stale = false;
    const c = this.connection;
    if (!this.notebook || !c) {
      this.show_('no notebook');
      return;
    }
    this.heading.textContent = this.notebook.context.path.split('/').pop() ?? '';
    if (!c.connected) {
      this.show_('nbbuild is not loaded in this kernel: run %load_ext nbbuild');
      return;
    }
    const asked = ++this.asked;
    const reply = await c.request('graph', { expand: [...this.expand] });
    if (asked !== this.asked || c !== this.connection) {
      return; // a newer drawing was asked for meanwhile
    }
    if (reply.error) {
      this.show_(reply.error);
      return;
    }
    this.nodes = reply.nodes ?? {};
    if (reply.svg) {
      this.zoom.show(reply.svg);
      this.node.dataset.drawn = String(++this.drawn);
      this.markSelected();
      const chosen = Object.values(this.nodes).find(n => n.key === this.selected);
      if (chosen && this.detailTitle) {
        this.detailTitle.textContent = `${chosen.label}: ${chosen.state}`;
      }
    } else {
      this.show_(reply.mermaid ? 'no Graphviz here to lay out the graph' : 'no rules yet');
    }
  }

  protected onAfterShow(): void {
    if (this.stale) {
      void this.refresh();
    }
  }

  private onChanged(): void {
    void this.refresh();
  }

  private show_(text: string): void {
    const p = document.createElement('p');
    p.className = 'nbbuild-panel-message';
    p.textContent = text;
    this.zoom.frame.replaceChildren(p);
    this.heading.textContent = this.notebook?.context.path.split('/').pop() ?? 'nbbuild';
  }

  private onClick(e: MouseEvent): void {
    const g = (e.target as Element).closest('g.node');
    const id = g?.querySelector('title')?.textContent?.trim();
    const node = id ? this.nodes[id] : undefined;
    if (!node) {
      return;
    }
    if (node.group) {
      this.expand.add(node.group);
      void this.refresh();
      return;
    }
    this.selected = node.key;
    this.markSelected();
    this.scrollTo(node);
    this.describe(node);
  }

  private markSelected(): void {
    for (const g of this.zoom.frame.querySelectorAll('g.node')) {
      const id = g.querySelector('title')?.textContent?.trim() ?? '';
      g.classList.toggle('nbbuild-selected', this.nodes[id]?.key === this.selected);
    }
  }

  private scrollTo(node: IGraphNode): void {
    const nb = this.notebook?.content;
    if (!nb || !node.cell) {
      return;
    }
    const index = nb.widgets.findIndex(w => w.model.id === node.cell);
    if (index >= 0) {
      nb.activeCellIndex = index;
      void nb.scrollToCell(nb.widgets[index], 'center');
    }
  }

  private describe(node: IGraphNode): void {
    const title = document.createElement('div');
    this.detailTitle = title;
    title.className = 'nbbuild-detail-title';
    title.textContent = `${node.label}: ${node.state}`;
    const actions = document.createElement('div');
    actions.className = 'nbbuild-actions';
    const out = document.createElement('pre');
    out.className = 'nbbuild-detail-output';
    if (node.reason && node.state !== 'up to date') {
      out.textContent = node.reason;
    }
    for (const [request, text] of [
      ['why', 'why'],
      ['build', 'build'],
      ['value', 'show value']
    ]) {
      const b = document.createElement('button');
      b.className = 'jp-Button jp-mod-styled jp-mod-accept';
      b.textContent = text;
      b.dataset.request = request;
      b.addEventListener('click', async () => {
        const c = this.connection;
        if (!c) {
          return;
        }
        out.textContent = request === 'build' ? 'building…' : '…';
        const reply = await c.request(request, { key: node.key });
        out.textContent = reply.error ?? reply.text ?? '';
        out.dataset.request = request;
      });
      actions.appendChild(b);
    }
    if (node.rule && this.expand.has(node.rule)) {
      const b = document.createElement('button');
      b.className = 'jp-Button jp-mod-styled';
      b.textContent = `collapse ${node.rule}`;
      b.addEventListener('click', () => {
        this.expand.delete(node.rule);
        void this.refresh();
      });
      actions.appendChild(b);
    }
    this.detail.replaceChildren(title, actions, out);
  }

  private zoom: Zoom;
  private heading: HTMLElement;
  private detail: HTMLElement;
  private detailTitle: HTMLElement | null = null;
  private notebook: NotebookPanel | null = null;
  private connection: Connection | null = null;
  private nodes: { [id: string]: IGraphNode } = {};
  private expand = new Set<string>();
  private selected: string | null = null;
  private asked = 0;
  private drawn = 0;
  private stale = true;
}
