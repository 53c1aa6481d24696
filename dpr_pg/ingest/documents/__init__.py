"""Documents: PDF, HTML, Markdown and DOCX files parsed into passages that follow their structure.

Modules: ``walk`` (folders, include/exclude globs, links, sizes), one parser per format (``pdf``,
``html``, ``markdown``, ``docx``), ``structure`` (a parsed document and its chunk records),
``extra`` (the optional parser packages), ``source`` (the pipeline's record source: the per-file
hash check, one parse per file, the chunks a changed file no longer has).

The parsers come with the ``documents`` extra: ``pip install 'dpr-pg[documents]'``.
"""

from dpr_pg.ingest.documents.structure import DOCUMENT_FORMATS, ParsedDocument, UnreadableDocument

__all__ = ["DOCUMENT_FORMATS", "ParsedDocument", "UnreadableDocument"]
