/**
 * Zoom and pan for a Graphviz SVG in a frame: drawn to fit the frame's width (never larger than
 * its natural size); where it is bigger than that, the mouse wheel (with Ctrl in a notebook's
 * output, where a plain wheel scrolls the page) zooms around the pointer, dragging pans, and the
 * buttons zoom in, out and back to fit. A click that did not drag reaches the SVG's nodes.
 */

const PT = 4 / 3; // Graphviz's SVG is in points

export interface IZoomOptions {
  /** Zoom on a plain wheel (the side panel); else only with Ctrl or Cmd held. */
  plainWheel?: boolean;
  /** Also fit the frame's height (the side panel); else the frame takes the drawing's height. */
  fitHeight?: boolean;
  /** Where the zoom buttons go; else just before the frame. */
  toolsIn?: HTMLElement;
}

export class Zoom {
  constructor(
    readonly frame: HTMLElement,
    readonly options: IZoomOptions = {}
  ) {
    frame.classList.add('nbbuild-zoom');
    frame.addEventListener('wheel', this.onWheel, { passive: false });
    frame.addEventListener('pointerdown', this.onDown);
    frame.addEventListener('click', this.onClick, true);
    const tools = document.createElement('div');
    tools.className = 'nbbuild-zoom-tools';
    for (const [text, title, act] of [
      ['+', 'zoom in', () => this.zoomBy(1.25)],
      ['−', 'zoom out', () => this.zoomBy(0.8)],
      ['fit', 'fit the drawing to the frame', () => this.fit()]
    ] as [string, string, () => void][]) {
      const b = document.createElement('button');
      b.className = 'jp-Button jp-mod-minimal';
      b.textContent = text;
      b.title = title;
      b.addEventListener('click', e => {
        e.stopPropagation();
        act();
      });
      tools.appendChild(b);
    }
    this.tools = tools;
    options.toolsIn?.appendChild(tools);
    if (typeof ResizeObserver !== 'undefined') {
      this.resize = new ResizeObserver(() => {
        if (this.fitted) {
          this.fit();
        }
      });
      this.resize.observe(frame);
    }
  }

  /** Show this SVG (markup or element), fitted. */
  show(svg: string | SVGSVGElement): SVGSVGElement | null {
    let el: SVGSVGElement | null;
    if (typeof svg === 'string') {
      const doc = new DOMParser().parseFromString(svg, 'image/svg+xml');
      el = doc.querySelector('svg');
      el = el ? (document.importNode(el, true) as SVGSVGElement) : null;
    } else {
      el = svg;
    }
    this.frame.replaceChildren();
    this.svg = el;
    if (!el) {
      return null;
    }
    const box = el.viewBox?.baseVal;
    const w = box && box.width ? box.width * PT : el.getBoundingClientRect().width || 300;
    const h = box && box.height ? box.height * PT : el.getBoundingClientRect().height || 150;
    this.natural = { w, h };
    el.removeAttribute('style');
    el.setAttribute('width', `${w}`);
    el.setAttribute('height', `${h}`);
    this.frame.appendChild(el);
    if (!this.tools.isConnected && this.frame.parentElement) {
      this.frame.before(this.tools);
    }
    this.fit();
    return el;
  }

  /** The whole drawing in the frame's width (and height, with fitHeight), at most its natural size.
   * In an output, the frame takes the width left to it in the output area (the drawing is laid
   * out of the flow, so that it cannot widen what holds it). */
  fit(): void {
    const { w, h } = this.natural;
    const out = this.options.fitHeight ? null : this.frame.closest('.jp-OutputArea-output');
    let width = this.frame.clientWidth || w;
    if (out) {
      if (!this.watched && this.resize) {
        this.resize.observe(out);
        this.watched = true;
      }
      const left = out.getBoundingClientRect().right - this.frame.getBoundingClientRect().left;
      width = left > 0 ? left - 2 : w;
    }
    let scale = Math.min(1, width / w);
    if (this.options.fitHeight && this.frame.clientHeight) {
      scale = Math.min(scale, this.frame.clientHeight / h);
    }
    this.fitScale = scale;
    if (!this.options.fitHeight) {
      this.frame.style.width = `${Math.floor(w * scale)}px`;
      this.tools.style.width = this.frame.style.width;
      this.frame.style.height = `${Math.ceil(h * scale)}px`;
    }
    this.set(scale, 0, 0);
    this.fitted = true;
  }

  zoomBy(factor: number, cx?: number, cy?: number): void {
    const rect = this.frame.getBoundingClientRect();
    const px = cx ?? rect.width / 2;
    const py = cy ?? rect.height / 2;
    const scale = Math.max(this.fitScale, Math.min(4, this.scale * factor));
    // the point under the pointer stays where it is
    const x = px - ((px - this.x) * scale) / this.scale;
    const y = py - ((py - this.y) * scale) / this.scale;
    this.set(scale, x, y);
    this.fitted = scale === this.fitScale;
  }

  get zoomable(): boolean {
    return this.fitScale < 1 || this.scale > this.fitScale;
  }

  dispose(): void {
    this.resize?.disconnect();
  }

  private set(scale: number, x: number, y: number): void {
    const { w, h } = this.natural;
    const rect = { w: this.frame.clientWidth || w * scale, h: this.frame.clientHeight || h * scale };
    // never pan the drawing out of the frame
    x = Math.min(0, Math.max(rect.w - w * scale, x));
    y = Math.min(0, Math.max(rect.h - h * scale, y));
    if (w * scale <= rect.w) {
      x = 0;
    }
    if (h * scale <= rect.h) {
      y = 0;
    }
    this.scale = scale;
    this.x = x;
    this.y = y;
    if (this.svg) {
      this.svg.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    }
    this.frame.dataset.zoomable = this.zoomable ? 'true' : 'false';
    // in an output, the buttons only where there is something to zoom
    this.tools.style.display = this.options.toolsIn || this.zoomable ? '' : 'none';
    this.frame.dataset.scale = scale.toFixed(3);
  }

  private onWheel = (e: WheelEvent): void => {
    if (!this.svg || (!this.options.plainWheel && !(e.ctrlKey || e.metaKey))) {
      return;
    }
    if (this.fitScale >= 1 && e.deltaY > 0 && this.scale <= this.fitScale) {
      return;
    }
    e.preventDefault();
    const rect = this.frame.getBoundingClientRect();
    this.zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - rect.left, e.clientY - rect.top);
  };

  private onDown = (e: PointerEvent): void => {
    if (!this.svg || e.button !== 0 || !this.zoomable || (e.target as Element).closest('button')) {
      return;
    }
    const start = { x: e.clientX, y: e.clientY, ox: this.x, oy: this.y };
    this.dragged = false;
    const move = (m: PointerEvent) => {
      const dx = m.clientX - start.x;
      const dy = m.clientY - start.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) {
        this.dragged = true;
      }
      if (this.dragged) {
        this.set(this.scale, start.ox + dx, start.oy + dy);
      }
    };
    const up = () => {
      window.removeEventListener('pointermove', move);
      window.removeEventListener('pointerup', up);
    };
    window.addEventListener('pointermove', move);
    window.addEventListener('pointerup', up);
  };

  private onClick = (e: MouseEvent): void => {
    if (this.dragged) {
      e.stopPropagation();
      e.preventDefault();
      this.dragged = false;
    }
  };

  private svg: SVGSVGElement | null = null;
  private tools: HTMLElement;
  private natural = { w: 1, h: 1 };
  private scale = 1;
  private fitScale = 1;
  private x = 0;
  private y = 0;
  private fitted = true;
  private dragged = false;
  private resize: ResizeObserver | null = null;
  private watched = false;
}
