"""The language server: LSP handlers, the open documents, message framing. The only place LSP types live."""
