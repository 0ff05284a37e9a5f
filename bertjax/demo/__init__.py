"""`make demo`: the embedded English corpus, the labelled WordNet set and the run that ties them together."""
