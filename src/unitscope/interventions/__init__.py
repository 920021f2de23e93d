"""Interventions on a layer's units, shared by every study that tests a label causally: the network after the
layer (`tail`: cut out of the graph, or re-run with a hook), conditions as channel masks (`conditions`), and
random and activation-matched control sets (`controls`)."""
