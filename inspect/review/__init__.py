"""The QA review: people check the model's decisions with their heatmaps, and their labels go back to training.

* :mod:`.app`: the local web app behind ``crackscope review`` (needs the ``review`` extras: Flask);
* :mod:`.store`: the reviewers' decisions, kept beside the records in ``results.sqlite``;
* :mod:`.stats`: agreement with the model and the escape and false-reject rates the decisions imply;
* :mod:`.export`: the reviewed items as a training dataset (``crackscope review export``).

Only :mod:`.app` imports Flask; this package imports nothing, so the store, stats and export work without it.
"""
