"""The language server: LSP messages ⇄ CompletionRequest / Completion. Nothing else.

Prompting, inference and filtering live in `Completer`; this module only validates
params, converts positions between the negotiated encoding and code points, and shapes
results the way editors accept them.

Why one module over 400 lines: every handler is registered on the one server in
`create_server` and shares the request translation above it; one LSP message's path reads top
to bottom here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.workspace import TextDocument
from pygls.workspace.position_codec import ServerTextPosition

from ghost_lsp import __version__
from ghost_lsp.completion.completer import Completer
from ghost_lsp.lsp.documents import DocumentStore
from ghost_lsp.feedback import FeedbackStore
from ghost_lsp.feedback.session import FeedbackLoop
from ghost_lsp.lsp.framing import FramedIO, Oversize
from ghost_lsp.settings.layers import effective_settings
from ghost_lsp.settings.core import Settings, db_path, from_dict, section_of_change
from ghost_lsp.lsp.learned import LearnedModel
from ghost_lsp.languages import language_for_path
from ghost_lsp.positions import lines_of
from ghost_lsp.types import Completion, CompletionRequest

log = logging.getLogger(__name__)

ACCEPT_COMMAND = "ghost.accept"
HEALTH = "ghost/health"
MODEL_RETRY_S = 5.0
# Requests whose malformed params (e.g. a negative position) get an empty answer, not silence.
_EMPTY_ON_BAD_PARAMS = {types.TEXT_DOCUMENT_INLINE_COMPLETION, types.TEXT_DOCUMENT_COMPLETION}
class _Answered:
    """Stands in for a message we already answered; pygls ignores unknown jsonrpc versions."""

    jsonrpc = "answered-by-ghost-lsp"


class GhostProtocol(LanguageServerProtocol):
    def handle_message(self, message) -> None:
        # LSP: before `initialize`, requests get ServerNotInitialized and notifications are
        # dropped (pygls would run the handler and answer with an internal error).
        method = getattr(message, "method", None)
        if self._workspace is None and method is not None and method not in (types.INITIALIZE, types.EXIT):
            if getattr(message, "id", None) is not None:
                log.warning("%s before initialize: refused", method)
                self._send_response(message.id, error=types.ResponseError(
                    code=types.ErrorCodes.ServerNotInitialized, message="the server is not initialized"))
            return
        super().handle_message(message)

    def structure_message(self, data: dict[str, Any]):
        # pygls drops a request whose params fail validation without answering it, and
        # the client waits until its timeout. Answer it here.
        try:
            return super().structure_message(data)
        except JsonRpcException:
            if "id" in data and "method" in data:
                log.warning("invalid params for %s (id %s)", data["method"], data["id"])
                if data["method"] in _EMPTY_ON_BAD_PARAMS:
                    self._send_response(data["id"], result=None)
                else:
                    self._send_response(data["id"], error=JsonRpcInvalidParams().to_response_error())
                return _Answered()
            raise


class GhostServer(LearnedModel, FramedIO, LanguageServer):
    """Holds the long-lived pieces: settings, engine (loaded lazily), feedback store, completer.
    Reads messages through framing.py (size limit, resynchronisation)."""

    def __init__(self, base: Settings, warnings: list[str] | None = None):
        super().__init__("ghost-lsp", __version__, protocol_cls=GhostProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.base = base  # defaults ← config file ← command line
        self.init_options: Any = None
        self.config_change: dict | None = None
        self.settings = base
        self.pending_warnings: list[str] = list(warnings or [])
        self.completer = Completer(None, base, None)
        self.store: FeedbackStore | None = None
        # What became of each suggestion, inferred from didChange (feedback/infer.py).
        self.feedback = FeedbackLoop(lambda sid, kind, detail: self.completer.event(sid, kind, detail))
        self._load_task: asyncio.Future | None = None
        self._load_failed_at: float | None = None  # a failed load is retried after MODEL_RETRY_S
        self._reported: set[str] = set()
        self.init_learned()

    # -- messages to the user ---------------------------------------------------------

    def tell(self, message: str, kind: types.MessageType = types.MessageType.Warning, *, logged: bool = False) -> None:
        """showMessage once per distinct message, and log it (stderr or the log file)."""
        if not logged:
            log.log(logging.ERROR if kind == types.MessageType.Error else logging.WARNING, "%s", message)
        if message in self._reported:
            return
        self._reported.add(message)
        try:
            self.window_show_message(types.ShowMessageParams(type=kind, message=f"ghost-lsp: {message}"))
        except Exception:  # no client connected yet (tests, early failure)
            log.debug("could not send showMessage", exc_info=True)

    def on_oversize(self, skipped: Oversize) -> None:
        mb = f"{skipped.size / 2**20:.1f} MB (limit {self.max_message_bytes / 2**20:.0f} MB)"
        if skipped.request_id is not None and skipped.method is not None:
            self.protocol._send_response(skipped.request_id, error=types.ResponseError(
                code=types.ErrorCodes.InvalidRequest, message=f"message of {mb} refused"))
        what = "a file" if skipped.method == types.TEXT_DOCUMENT_DID_OPEN else f"a {skipped.method or 'message'}"
        self.tell(f"{what} of {mb} was too large to read; no suggestions for it")

    def report_server_error(self, error: Exception, source) -> None:
        # pygls shows every internal error to the user: once per kind is enough.
        log.error("internal error (%s): %s", getattr(source, "__name__", source), error)
        self.tell(f"internal error ({type(error).__name__}); see the log", types.MessageType.Error, logged=True)

    # -- settings -----------------------------------------------------------------------

    def apply_settings(self, change: Any = None, *, initial: bool = False) -> None:
        """Rebuild the settings: base ← initializationOptions ← the latest configuration
        change (a client sends its whole section each time)."""
        if change is not None:
            self.config_change = change
        s, warnings = from_dict(self.init_options, self.base)
        if self.config_change is not None:
            s, more = from_dict(self.config_change, s)
            warnings += more
        s, self.completer.variant, more = effective_settings(s, self.workspace_root(), str(db_path(s)))
        warnings += more
        old, self.settings = self.settings, s
        self.completer.settings = s
        logging.getLogger("ghost_lsp").setLevel(s.log_level)
        if initial:
            self.pending_warnings += warnings
            return
        for w in warnings:
            self.tell(w)
        if s != old:
            self.completer.forward.clear()  # a cached suggestion may come from the old model or filters
        if (old.db, old.feedback) != (s.db, s.feedback):
            self.open_store()
        remote = ("remote_url", "remote_token", "remote_timeout_ms", "remote_model", "remote_fallback",
                  "remote_model_dir", "remote_context", "remote_dialect")
        if (self.serving_folder(old)[0] != self.serving_folder(s)[0]
                or any(getattr(old, k) != getattr(s, k) for k in remote)) and self._load_task is not None:
            self._load_task = None
            self.start_loading()

    def open_store(self) -> None:
        if self.store is not None:
            self.store.close(timeout=2)
        path = db_path(self.settings)
        self.store = FeedbackStore(path, enabled=self.settings.feedback)
        self.completer.store = self.store
        if self.store.warning:
            self.tell(self.store.warning + "; suggestions are still served", logged=True)
        elif self.store.enabled:
            log.info("feedback log: %s", path)

    # -- the model ----------------------------------------------------------------------

    def start_loading(self) -> asyncio.Future:
        if self._load_task is None:
            self._load_task = asyncio.ensure_future(self._load(self.serving_folder()[0]))
        return self._load_task

    async def _load(self, folder) -> None:
        # Requests wait for this load (engine_ready); the engine answering so far stays in place
        # until a new one is ready, and keeps answering if the new one does not load.
        previous = self.completer.engine
        learned = folder == self.serving_folder()[0] and self.serving_folder()[1]
        try:
            engine = await asyncio.to_thread(_load_engine, folder, self.settings)
        except Exception as e:
            cause = str(e) if str(folder) in str(e) else f"{folder}: {e}"
            if learned and await self.serve_base_instead(folder, cause):
                return
            self._load_failed_at = time.monotonic()
            if previous is not None:
                self.tell(f"model not loaded: {cause}; still serving {previous.model_id}", types.MessageType.Error)
                return
            self.completer.engine = None
            self.tell(f"model not loaded: {cause}. No suggestions until this is fixed.", types.MessageType.Error)
            return
        if self._load_failed_at is not None:
            log.warning("model loaded from %s after an earlier failure", folder)
            self._load_failed_at = None
        if self._load_task is not asyncio.current_task():
            return  # settings moved on to another model while this one loaded: that load serves
        # (a learned model that appeared meanwhile is swapped in by the next request's check)
        self.completer.engine, self.served = engine, folder
        self._loads += 1
        self.watch.mark(folder)
        if learned:  # said in the log only: a message at every start would be noise (ghost/health says it)
            log.info("serving %s, the model learned from this workspace (%s)", engine.model_id, folder)

    def load_engine_at(self, folder):
        return _load_engine(folder, self.settings)

    async def engine_ready(self) -> bool:
        failed = self._load_failed_at
        if failed is not None and time.monotonic() - failed > MODEL_RETRY_S and self._load_task is not None \
                and self._load_task.done():
            self._load_task = None  # the file may be fixed by now: try again (quietly if not)
        # shield: a cancelled request must not cancel the shared load
        await asyncio.shield(self.start_loading())
        self.check_learned()
        return self.completer.engine is not None

    # -- the project index (context/index.py) --------------------------------------------

    def start_index(self) -> None:
        """Index the workspace folder in the background; requests use what is built so far."""
        root = self.workspace.root_path
        if not root or "project" not in self.settings.context_providers:
            return
        from ghost_lsp.context.index import ProjectIndex

        self.completer.index = ProjectIndex(root, exclude=tuple(self.settings.exclude)).start()
        caps = self.client_capabilities.workspace
        watched = getattr(caps, "did_change_watched_files", None) if caps else None
        if watched is not None and watched.dynamic_registration:
            opts = types.DidChangeWatchedFilesRegistrationOptions(
                watchers=[types.FileSystemWatcher(glob_pattern="**/*.py")])
            reg = types.Registration(id="ghost-lsp-watch-py", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                                     register_options=opts)
            try:
                self.client_register_capability(types.RegistrationParams(registrations=[reg]))
            except Exception:  # the index still updates on didSave
                log.debug("could not register file watchers", exc_info=True)

    async def reindex(self, uri: str, deleted: bool = False) -> None:
        index = self.completer.index
        if index is None or not uri.startswith("file:"):
            return
        from pygls.uris import to_fs_path

        path = to_fs_path(uri)
        if not path:
            return
        try:
            if deleted:
                index.remove(path)
            else:
                await asyncio.to_thread(index.update, path)
            if index.module_of_path(path) is not None or deleted:
                await asyncio.to_thread(self.completer.file_changed, path, deleted)  # n-gram cache
        except Exception:  # a file we cannot read must not break the server
            log.warning("project index: could not update %s", path, exc_info=True)

    def workspace_root(self) -> str | None:
        try:
            return self.workspace.root_path
        except RuntimeError:  # before initialize
            return None

    async def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        self.feedback.stop()
        self.completer.close()
        if self.store is not None:
            await asyncio.to_thread(self.store.close, 2)


def _model_status(ls: GhostServer) -> dict:
    """Which model answers: its id, its folder, whether it is the workspace's learned model."""
    engine, folder = ls.completer.engine, ls.served
    return {"model": engine.model_id if engine is not None else None,
            "model_dir": str(folder) if folder is not None else None,
            "learned_model": folder is not None and ls.serving_folder() == (folder, True)}


def _rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):  # not Linux
        return -1


def _load_engine(folder, settings: Settings | None = None):
    """Runs on a worker thread; the onnxruntime import is paid here, not at startup."""
    from ghost_lsp.engine.loading import load_engine

    engine = load_engine(folder, settings)
    if settings is None or not settings.remote_url:
        log.info("model %s from %s, execution provider %s", engine.model_id, folder, engine.provider)
    return engine


# -- request translation ------------------------------------------------------------------


def _document(ls: GhostServer, uri: str) -> TextDocument | None:
    # workspace.get_text_document would read an unknown URI from disk; we answer only
    # for documents the client opened.
    return ls.workspace.text_documents.get(unquote(uri))


def _cursor(doc: TextDocument, pos: types.Position) -> tuple[list[str], int] | None:
    """(the document's lines, cursor column in code points), or None if the position does
    not exist. Lines are split on "\n" as the context stage splits them (pygls' own
    `lines` also breaks at U+2028 and friends, which LSP does not)."""
    lines = lines_of(doc.source)
    if pos.line < 0 or pos.character < 0 or pos.line >= len(lines):
        return None
    text = lines[pos.line].removesuffix("\r")
    codec = doc.position_codec
    if pos.character > codec.client_num_units(text):
        return None
    if not text:
        return lines, 0
    col = codec.position_from_client_units([text], types.Position(line=0, character=pos.character)).character
    if codec.client_num_units(text[:col]) != pos.character:
        return None  # inside a character (half a UTF-16 surrogate pair): not a real position
    return lines, col


def _client_position(ls: GhostServer, lines: list[str], line: int, col: int) -> types.Position:
    """Code points back to the negotiated encoding."""
    return ls.workspace.position_codec.position_to_client_units(lines, ServerTextPosition(line, col))


def _language(doc: TextDocument) -> str:
    return doc.language_id or language_for_path(doc.path or "")


async def _suggest(ls: GhostServer, uri: str, pos: types.Position, *, multiline: bool, trigger: str):
    """Shared by both completion features: (doc, request, completion, line text, column)
    or None. Never raises except CancelledError."""
    doc = _document(ls, uri)
    if doc is None:
        log.debug("completion for unknown document %s", uri)
        return None
    text = doc.source
    if "\x00" in text:
        return None  # binary content
    cur = _cursor(doc, pos)
    if cur is None:
        log.debug("position %s:%s not in %s", pos.line, pos.character, uri)
        return None
    if not await ls.engine_ready():
        return None
    lines, col = cur
    line_text = lines[pos.line]
    req = CompletionRequest(uri=uri, version=doc.version, line=pos.line, character=col,
                            language=_language(doc), path=doc.path or "", multiline=multiline,
                            trigger=trigger)
    open_docs = {d.path or u: d.source for u, d in ls.workspace.text_documents.items() if d is not doc}
    try:
        completion = await ls.completer.complete(req, text, open_docs)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("completion failed")
        return None
    if completion is None or not completion.text.strip():
        return None
    now = _document(ls, uri)
    if now is None or now.version != req.version or (req.version is None and now.source != text):
        log.debug("dropping a suggestion for a stale version of %s", uri)
        return None
    ls.completer.shown(completion, req)
    ls.feedback.shown(unquote(uri), completion.id, completion.text, text, pos.line, col)
    return lines, completion, line_text, col


def _accept(completion: Completion) -> types.Command:
    return types.Command(title="Accept suggestion", command=ACCEPT_COMMAND, arguments=[completion.id])


def _completion_items(ls: GhostServer) -> bool:
    """Whether to answer textDocument/completion: the setting, else only for clients
    without inline completion (so one keystroke costs one inference, not two)."""
    if ls.settings.completion_items is not None:
        return ls.settings.completion_items
    caps = ls.client_capabilities.text_document
    return caps is None or caps.inline_completion is None


def _word_start(line_text: str, col: int) -> int:
    i = col
    while i > 0 and (line_text[i - 1].isalnum() or line_text[i - 1] == "_"):
        i -= 1
    return i


def create_server(base: Settings | None = None, warnings: list[str] | None = None) -> GhostServer:
    server = GhostServer(base or Settings(), warnings)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: GhostServer, params: types.InitializeParams):
        # pygls has just made its Workspace; ours applies edits in O(edit), not O(document).
        ls.protocol._workspace = DocumentStore.replacing(ls.protocol._workspace)
        ls.init_options = params.initialization_options
        ls.apply_settings(initial=True)

    @server.feature(types.INITIALIZED)
    def on_initialized(ls: GhostServer, params: types.InitializedParams):
        for w in ls.pending_warnings:
            ls.tell(w)
        ls.pending_warnings.clear()
        ls.open_store()
        ls.start_loading()  # in a thread; requests wait for it
        ls.feedback.start()
        ls.start_index()
        ls._idle_task = asyncio.ensure_future(ls.idle_learning())

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    async def on_save(ls: GhostServer, params: types.DidSaveTextDocumentParams):
        await ls.reindex(params.text_document.uri)

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    async def on_watched_files(ls: GhostServer, params: types.DidChangeWatchedFilesParams):
        for change in params.changes:
            await ls.reindex(change.uri, deleted=change.type == types.FileChangeType.Deleted)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def on_configuration(ls: GhostServer, params: types.DidChangeConfigurationParams):
        section = section_of_change(params.settings)
        if section is not None:
            ls.apply_settings(section)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: GhostServer, params: types.InlineCompletionParams):
        trigger = ("invoked" if params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
                   else "automatic")
        got = await _suggest(ls, params.text_document.uri, params.position, multiline=True, trigger=trigger)
        if got is None:
            return None
        lines, completion, line_text, col = got
        # VS Code keeps an inline item only if it replaces from the line start: so the range
        # is line start..cursor and the text repeats the line up to the cursor.
        end = _client_position(ls, lines, params.position.line, col)
        rng = types.Range(start=types.Position(line=params.position.line, character=0), end=end)
        # the best first, then the ranked alternatives (clients that cycle through items show them)
        items = [types.InlineCompletionItem(insert_text=line_text[:col] + text, range=rng,
                                            command=_accept(completion))
                 for text in [completion.text, *completion.alternatives] if text.strip()]
        return types.InlineCompletionList(items=items)

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    async def completion(ls: GhostServer, params: types.CompletionParams):
        if not _completion_items(ls):
            return None
        got = await _suggest(ls, params.text_document.uri, params.position, multiline=False, trigger="invoked")
        if got is None:
            return None
        lines, completion, line_text, col = got
        label = next((ln.strip() for ln in completion.text.splitlines() if ln.strip()), "")
        if not label:
            return None
        # Replace the word being typed by itself + the suggestion: same result as inserting
        # at the cursor, but clients then filter on the typed word against filterText
        # instead of dropping the item.
        start = _word_start(line_text, col)
        word = line_text[start:col]
        rng = types.Range(start=_client_position(ls, lines, params.position.line, start),
                          end=_client_position(ls, lines, params.position.line, col))
        item = types.CompletionItem(
            label=label,
            kind=types.CompletionItemKind.Text,
            detail="ghost-lsp",
            documentation=types.MarkupContent(kind=types.MarkupKind.PlainText, value=completion.text),
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=rng, new_text=word + completion.text),
            filter_text=word + completion.text.split("\n", 1)[0],
            sort_text="0",
            command=_accept(completion),
        )
        # Incomplete: the next keystroke asks again rather than filtering a stale suggestion.
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.command(ACCEPT_COMMAND)
    def accept(ls: GhostServer, *args):
        if not args or not isinstance(args[0], str) or len(args[0]) > 128:
            log.warning("%s: expected a suggestion id, got %r", ACCEPT_COMMAND, args[:1])
            return None
        ls.feedback.accepted(args[0])
        return None

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def on_change(ls: GhostServer, params: types.DidChangeTextDocumentParams):
        doc = _document(ls, params.text_document.uri)  # pygls has applied the change already
        ls.idle_learner.typed()
        if doc is not None:
            ls.feedback.changed(unquote(params.text_document.uri), doc.source)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def on_close(ls: GhostServer, params: types.DidCloseTextDocumentParams):
        ls.feedback.closed(unquote(params.text_document.uri))

    @server.feature(HEALTH)
    def health(ls: GhostServer, *args):
        """Counts to watch for leaks (tests/reliability): tasks, threads, memory, open documents."""
        return {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count(), "rss_kb": _rss_kb(),
                "documents": len(ls.workspace.text_documents), "running": len(ls.completer._running),
                "model_loaded": ls.completer.engine is not None, **_model_status(ls)}

    @server.feature(types.SHUTDOWN)
    async def on_shutdown(ls: GhostServer, *args):
        await ls.close()

    return server
