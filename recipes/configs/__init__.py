"""One recipe per file: ``RECIPE`` dicts for ``python -m recipes train NAME``.

Values follow the released Spike2Former configs; the paper's
differing values are noted where they apply. Data roots are relative to the
working directory and usually set with ``--set data.root=...``.
"""
