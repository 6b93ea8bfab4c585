/**
 * A badge in the prompt area of each rule cell: its state as the kernel side says it, the reason
 * on hover. Cells the kernel says nothing about carry no badge.
 */
import { NotebookPanel } from '@jupyterlab/notebook';

import { Connection, ICellState } from './connection';

const SHORT: { [state: string]: string } = {
  'up to date': 'up to date',
  stale: 'stale',
  running: 'running',
  failed: 'failed',
  'never built': 'not built',
  'not stored': 'not stored'
};

export function tooltip(s: ICellState): string {
  const head = s.title ? `${s.title}: ` : '';
  const body = s.state === s.reason || s.reason === 'up to date' ? s.state : `${s.state}: ${s.reason}`;
  const then = s.restored ? '\n(as the last session left it: run the cell to check)' : '';
  return head + body + then;
}

export class Badges {
  constructor(
    readonly panel: NotebookPanel,
    readonly connection: Connection
  ) {
    connection.changed.connect(this.update, this);
    // cells added, moved or pasted get their badges (the model is there once the file is read)
    void panel.context.ready.then(() => panel.content.model?.cells.changed.connect(this.update, this));
  }

  update(): void {
    const states = this.connection.states;
    for (const cell of this.panel.content.widgets) {
      const area = cell.inputArea?.node;
      if (!area) {
        // a cell not drawn yet (JupyterLab draws the cells out of view later): once it is
        if (!this.waiting.has(cell)) {
          this.waiting.add(cell);
          void cell.ready.then(() => this.update());
        }
        continue;
      }
      const state = states.get(cell.model.id);
      let badge = area.querySelector(':scope > .nbbuild-badge') as HTMLElement | null;
      if (!state) {
        badge?.remove();
        continue;
      }
      if (!badge) {
        badge = document.createElement('div');
        badge.className = 'nbbuild-badge';
        area.appendChild(badge);
      }
      badge.dataset.state = state.state;
      badge.dataset.restored = state.restored ? 'true' : 'false';
      badge.textContent = SHORT[state.state] ?? state.state;
      badge.title = tooltip(state);
    }
  }

  private waiting = new WeakSet<object>();

  dispose(): void {
    this.connection.changed.disconnect(this.update, this);
  }
}
