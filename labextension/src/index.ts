/**
 * nbbuild in JupyterLab and in Notebook 7: each rule cell carries a badge saying whether it is up
 * to date, and a side panel draws the notebook's live task graph. Both speak to the kernel side
 * (nbbuild/notebook/lab.py) over the comm `nbbuild`; a kernel without nbbuild is left alone.
 *
 * Only the notebook tracker is required, which both front ends provide. JupyterLab (ILabShell)
 * gets the panel in its right side bar at once; Notebook 7, whose shell has a right side panel
 * too (listed under View > Right Sidebar and in the palette by the panel's caption), gets it with
 * its first notebook, so that its file browser and editor pages offer no panel about nothing.
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { Badges } from './badges';
import { Connection } from './connection';
import { enhanceGraphs } from './inline';
import { GraphPanel } from './panel';

const ICON = new LabIcon({
  name: 'nbbuild:graph',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<rect x="2" y="9" width="6" height="6" rx="1.5"/><rect x="16" y="3" width="6" height="6" rx="1.5"/>' +
    '<rect x="16" y="15" width="6" height="6" rx="1.5"/>' +
    '<path d="M8 11.3h3.2l4.8-5v1.5l-4.2 4.4h-3.8zM8 12.7h3.2l4.8 5v-1.5l-4.2-4.4h-3.8z"/></g></svg>'
});

/** The connection of each open notebook. */
const connections = new Map<NotebookPanel, Connection>();

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbbuild:plugin',
  description: 'Badges on rule cells and the task graph of nbbuild',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILabShell],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, labShell: ILabShell | null) => {
    const panel = new GraphPanel();
    panel.title.icon = ICON;
    let placed = false;
    const place = () => {
      if (!placed) {
        placed = true;
        app.shell.add(panel, 'right', { rank: 900 });
      }
    };
    if (labShell) {
      place();
    }

    tracker.widgetAdded.connect((_, nb) => {
      place();
      const connection = new Connection(nb);
      const badges = new Badges(nb, connection);
      connections.set(nb, connection);
      const stop = enhanceGraphs(nb, connection);
      nb.disposed.connect(() => {
        stop();
        badges.dispose();
        connection.dispose();
        connections.delete(nb);
        if (tracker.currentWidget === null) {
          panel.follow(null, null);
        }
      });
      if (tracker.currentWidget === nb) {
        panel.follow(nb, connection);
      }
    });
    tracker.currentChanged.connect((_, nb) => {
      panel.follow(nb, nb ? connections.get(nb) ?? null : null);
    });
  }
};

export default plugin;
