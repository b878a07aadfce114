"""The open-document store: pygls' Workspace with edits applied in time proportional to
the edit, not to the document.

pygls applies an incremental didChange by splitting the whole document into lines and
writing every line into a new string: O(document) Python work per keystroke (about
30 ms on a 10 MB file here). `Document` finds the edited lines by scanning from the last
edit's line (typing stays in one place) and splices the string once (a memcpy).
Ranges outside the document are clamped to it, as editors do; a change for a document
that was never opened is ignored instead of raising (pygls would report an error to the
user per keystroke).
"""

from __future__ import annotations

import logging

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace

log = logging.getLogger(__name__)


class Document(TextDocument):
    # (line, code-point offset of its start) of the last edit: the next edit is near it
    _anchor: tuple[int, int] = (0, 0)

    def _line_start(self, src: str, line: int) -> int | None:
        """Offset where `line` starts, or None past the end."""
        a_line, a_off = self._anchor
        if line < a_line // 2:
            a_line, a_off = 0, 0  # nearer the top than the anchor
        while a_line > line:  # walk back to the start of the previous line
            a_off = src.rfind("\n", 0, a_off - 1) + 1
            a_line -= 1
        while a_line < line:
            nl = src.find("\n", a_off)
            if nl < 0:
                return None
            a_off, a_line = nl + 1, a_line + 1
        return a_off

    def _offset(self, src: str, pos: types.Position, start: int, start_line: int) -> tuple[int, int]:
        """(offset, line) of a client position, clamped into the document; scanning from
        (start, start_line), a line start at or before it."""
        line, off = start_line, start
        while line < pos.line:
            nl = src.find("\n", off)
            if nl < 0:
                return len(src), line  # past the last line: the end of the document
            off, line = nl + 1, line + 1
        end = src.find("\n", off)
        text = src[off:len(src) if end < 0 else end]
        text = text[:-1] if text.endswith("\r") else text
        units = max(0, pos.character)
        if self.position_codec.client_num_units(text) <= units:
            return off + len(text), line
        col = self.position_codec.position_from_client_units(
            [text], types.Position(line=0, character=units)).character
        return off + col, line

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        src = self.source
        rng = change.range
        s_line = max(0, rng.start.line)
        s_pos = types.Position(line=s_line, character=rng.start.character)
        line_start = self._line_start(src, s_line)
        if line_start is None:  # starts past the end: append, as pygls does
            self._source = src + change.text
            return
        start, _ = self._offset(src, s_pos, line_start, s_line)
        e_pos = rng.end
        if (e_pos.line, e_pos.character) < (s_pos.line, s_pos.character):
            e_pos = s_pos  # an inverted range: treat it as an insertion
        end, _ = self._offset(src, e_pos, line_start, s_line)
        self._source = src[:start] + change.text + src[max(start, end):]
        self._anchor = (s_line, line_start)

    def _apply_full_change(self, change: types.TextDocumentContentChangeEvent) -> None:
        self._anchor = (0, 0)
        super()._apply_full_change(change)


class DocumentStore(Workspace):
    """pygls' Workspace holding `Document`s; tolerant of changes to unknown documents."""

    @classmethod
    def replacing(cls, ws: Workspace) -> "DocumentStore":
        """A store with `ws`'s root, folders, sync kind and position encoding."""
        return cls(ws.root_uri, ws._sync_kind, list(ws.folders.values()), ws._position_encoding)

    def _create_text_document(self, doc_uri, source=None, version=None, language_id=None) -> TextDocument:
        return Document(doc_uri, source=source, version=version, language_id=language_id,
                        sync_kind=self._sync_kind, position_codec=self._position_codec)

    def update_text_document(self, text_doc: types.VersionedTextDocumentIdentifier,
                             change: types.TextDocumentContentChangeEvent) -> None:
        from urllib.parse import unquote

        doc = self.text_documents.get(unquote(text_doc.uri))
        if doc is None:
            log.debug("didChange for %s, which is not open: ignored", text_doc.uri)
            return
        if doc.version is not None and text_doc.version is not None and text_doc.version < doc.version:
            # The client's text is the truth; the version only orders requests.
            log.debug("%s: version went back from %s to %s", text_doc.uri, doc.version, text_doc.version)
        super().update_text_document(text_doc, change)
