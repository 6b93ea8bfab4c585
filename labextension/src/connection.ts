/**
 * One notebook's link to the kernel side of nbbuild (nbbuild/notebook/lab.py): a comm with the
 * target `nbbuild`, opened when the kernel is ready and again after a cell that loads nbbuild
 * (`%load_ext nbbuild`) ran. A kernel without nbbuild closes it at once: then nothing happens.
 * It keeps the last states the kernel sent, and is cleared when the kernel restarts.
 */
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

export type State = 'up to date' | 'stale' | 'never built' | 'failed' | 'not stored' | 'running';

export interface ICellState {
  state: State;
  reason: string;
  title: string;
  rule?: string;
  restored?: boolean;
}

export interface IGraphNode {
  key: string;
  label: string;
  state: string;
  reason: string;
  cell: string | null;
  rule: string;
  group: string | null;
}

export interface IReply {
  type: 'reply';
  id: number;
  request: string;
  error?: string;
  text?: string;
  svg?: string | null;
  mermaid?: string | null;
  nodes?: { [id: string]: IGraphNode };
}

const LOADS = /%(re)?load_ext\s+nbbuild\b/;

export class Connection {
  constructor(readonly panel: NotebookPanel) {
    const ctx = panel.sessionContext;
    ctx.statusChanged.connect((_, status) => {
      if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
        this.reset();
      }
    });
    ctx.kernelChanged.connect(() => {
      this.reset();
      void this.tryOpen();
    });
    NotebookActions.executed.connect(this.onExecuted, this);
    void ctx.ready.then(() => this.tryOpen());
  }

  /** The cells' states changed (a `states` or `running` message, or a reset). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get states(): ReadonlyMap<string, ICellState> {
    return this._states;
  }

  get connected(): boolean {
    return this.comm !== null;
  }

  /** Ask the kernel side; resolves with its reply (an `error` field when it failed). */
  request(request: string, args: { [k: string]: unknown } = {}): Promise<IReply> {
    const comm = this.comm;
    if (!comm) {
      return Promise.resolve({
        type: 'reply',
        id: -1,
        request,
        error: 'nbbuild is not loaded in this kernel (%load_ext nbbuild)'
      });
    }
    const id = ++this.lastId;
    return new Promise(resolve => {
      this.pending.set(id, resolve);
      comm.send({ request, id, ...args } as any);
    });
  }

  dispose(): void {
    NotebookActions.executed.disconnect(this.onExecuted, this);
    this.reset();
    Signal.clearData(this);
  }

  private onExecuted(_: unknown, args: { notebook: unknown; cell: any }): void {
    if (args.notebook !== this.panel.content || this.comm) {
      return;
    }
    const source: string = args.cell.model.sharedModel.getSource();
    if (LOADS.test(source)) {
      void this.tryOpen();
    }
  }

  private async tryOpen(): Promise<void> {
    const kernel = this.panel.sessionContext.session?.kernel;
    if (!kernel || this.comm || this.opening) {
      return;
    }
    this.opening = true;
    try {
      const comm = kernel.createComm('nbbuild');
      comm.onMsg = msg => this.onMsg(msg);
      comm.onClose = () => {
        if (this.comm === comm) {
          this.reset();
        }
      };
      this.comm = comm;
      const cells = this.panel.content.widgets.map(c => c.model.id);
      await comm.open({ path: this.panel.context.path, cells }).done;
    } catch (e) {
      this.comm = null;
    } finally {
      this.opening = false;
    }
  }

  private onMsg(msg: KernelMessage.ICommMsgMsg): void {
    const data = msg.content.data as any;
    if (data.type === 'states') {
      this._states = new Map(Object.entries(data.cells as { [id: string]: ICellState }));
      this._changed.emit();
    } else if (data.type === 'running') {
      const old = this._states.get(data.cell);
      this._states.set(data.cell, {
        state: 'running',
        reason: 'running now',
        title: old ? old.title : ''
      });
      this._changed.emit();
    } else if (data.type === 'reply') {
      const resolve = this.pending.get(data.id);
      this.pending.delete(data.id);
      if (resolve) {
        resolve(data as IReply);
      }
    }
  }

  private reset(): void {
    const comm = this.comm;
    this.comm = null;
    if (comm && !comm.isDisposed) {
      try {
        comm.dispose();
      } catch (e) {
        // the kernel is gone already
      }
    }
    for (const resolve of this.pending.values()) {
      resolve({ type: 'reply', id: -1, request: '', error: 'the kernel restarted' });
    }
    this.pending.clear();
    this._states = new Map();
    this._changed.emit();
  }

  private comm: Kernel.IComm | null = null;
  private opening = false;
  private lastId = 0;
  private pending = new Map<number, (reply: IReply) => void>();
  private _states = new Map<string, ICellState>();
  private _changed = new Signal<this, void>(this);
}
