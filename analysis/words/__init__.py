"""Words: where the analysis' facts become sentences, shared by every renderer.

The analysis decides facts (``analysis/attribute.py``: causes, counts; ``analysis/model.py``:
the report); the renderers only render. A finding's rule (``analysis/findings.py``) keeps its
own words, and a verdict's reason is written where it is decided. Here:

- ``causes``: the ``CAUSES`` registry, each cause's words and colours (every view reads it);
- ``summary``: the summary's sentences (the verdict first, its fix last);
- ``numbers``: numbers as every sentence writes them (fmt_int, fmt_s, fmt_approx, plural);
- ``collector``: a collection in its collector's own terms, the thresholds line;
- ``drops``: where a group of connections came from, what ended a drop, a pattern of collections;
- ``aborted``: the connections that ended without COM_QUIT (aborted clients), per driver.
"""
