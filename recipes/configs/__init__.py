"""One recipe per file: ``RECIPE`` dicts for ``python -m recipes train NAME``.

Values follow the official Spike2Former configs (DESIGN.md section 5); the paper's
differing values are noted where they apply. Data roots are relative to the
working directory and usually set with ``--set data.root=...``.
"""
