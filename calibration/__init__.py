"""Calibration of an exported model, torch-free: temperature, certified OK / REVIEW / DEFECT thresholds, label audit.

The data path: :mod:`.score` runs the ONNX file over labelled items, :mod:`.temperature` fits ``T``,
:mod:`.thresholds` certifies the escape and false-reject rates (Learn-Then-Test), :mod:`.metrics` measures ECE and
the rates, :mod:`.calibrate` is ``crackscope calibrate`` (and the demo's step), :mod:`.report` writes
``calibration.html``; :mod:`.audit` and :mod:`.annotators` are ``crackscope audit``.
"""
