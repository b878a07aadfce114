--- ghost-lsp for Neovim >= 0.11: `require('ghost').setup({ ... })`.
---
--- Registers the language server with vim.lsp.config/vim.lsp.enable. On Neovim 0.12+
--- suggestions are inline ghost text (vim.lsp.inline_completion) accepted with a key that
--- falls back to a plain <Tab>; on 0.11 they come through the completion menu
--- (vim.lsp.completion). Files matching `exclude` never get the server attached.
local M = {}

M.defaults = {
  -- Command that starts the server; nil = find `ghost-lsp` (see M.find_command).
  cmd = nil,
  filetypes = { 'python' },
  -- Server settings (section "ghost"): model, maxNewTokens, temperature, exclude, ...
  settings = {},
  -- Buffers whose path matches one of these globs get no ghost-lsp client at all.
  exclude = { '**/.env', '**/.env.*', '**/secrets/**', '*.pem', '*.key', '**/.ssh/**' },
  -- Insert-mode key that accepts the ghost text; it types itself when there is none.
  accept_key = '<Tab>',
  -- Insert-mode key that asks for a suggestion in the completion menu (Neovim 0.11 path;
  -- <C-x><C-o> works too).
  menu_key = '<C-Space>',
  -- Inline ghost text where Neovim has it (0.12+); false = always the completion menu.
  inline = true,
}

M.config = vim.deepcopy(M.defaults)

local has_inline = vim.lsp.inline_completion ~= nil

--- `ghost-lsp` from the active virtual environment, the project's .venv/venv, or $PATH.
---@param root string?
---@return string[]?
function M.find_command(root)
  local candidates = {}
  if vim.env.VIRTUAL_ENV then
    table.insert(candidates, vim.env.VIRTUAL_ENV .. '/bin/ghost-lsp')
  end
  if root then
    table.insert(candidates, root .. '/.venv/bin/ghost-lsp')
    table.insert(candidates, root .. '/venv/bin/ghost-lsp')
  end
  for _, path in ipairs(candidates) do
    if vim.fn.executable(path) == 1 then
      return { path, 'serve' }
    end
  end
  if vim.fn.executable('ghost-lsp') == 1 then
    return { vim.fn.exepath('ghost-lsp'), 'serve' }
  end
  return nil
end

--- Whether `path` matches one of the exclusion globs (anywhere below the root for `**`).
---@param path string
---@return boolean
function M.is_excluded(path)
  if path == '' then
    return false
  end
  local name = vim.fs.basename(path)
  for _, glob in ipairs(M.config.exclude) do
    local ok, pattern = pcall(vim.glob.to_lpeg, glob)
    if ok and (pattern:match(path) or (not glob:find('/') and pattern:match(name))) then
      return true
    end
    -- "**/x" also matches a relative "x" at the top.
    if ok and glob:sub(1, 3) == '**/' and vim.glob.to_lpeg(glob:sub(4)):match(name) then
      return true
    end
  end
  return false
end

local function server_settings()
  return { ghost = vim.tbl_extend('force', { enabled = M.enabled }, M.config.settings) }
end

local function notify_settings()
  for _, client in ipairs(vim.lsp.get_clients({ name = 'ghost' })) do
    client.settings = server_settings()
    client:notify('workspace/didChangeConfiguration', { settings = client.settings })
  end
end

M.enabled = true

--- Turn suggestions on or off (client side and in the server, which then skips inference).
---@param on boolean?
function M.toggle(on)
  if on == nil then
    on = not M.enabled
  end
  M.enabled = on
  if has_inline and M.config.inline then
    vim.lsp.inline_completion.enable(on)
  end
  notify_settings()
  vim.notify('ghost-lsp suggestions ' .. (on and 'on' or 'off'))
end

--- Accept the ghost text if one is shown. Returns true when it did.
---@return boolean
function M.accept()
  return has_inline and vim.lsp.inline_completion.get() or false
end

local function on_attach(client, bufnr)
  if has_inline and M.config.inline then
    vim.lsp.inline_completion.enable(M.enabled, { bufnr = bufnr })
    vim.keymap.set('i', M.config.accept_key, function()
      if M.accept() then
        return ''
      end
      return vim.api.nvim_replace_termcodes(M.config.accept_key, true, false, true)
    end, { buffer = bufnr, expr = true, replace_keycodes = false, desc = 'ghost-lsp: accept suggestion' })
  else
    -- Neovim 0.11: suggestions are completion items; autotrigger shows the menu as you type.
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true })
    vim.keymap.set('i', M.config.menu_key, vim.lsp.completion.get,
      { buffer = bufnr, desc = 'ghost-lsp: suggestion in the completion menu' })
  end
end

---@param opts table?
function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  local use_inline = has_inline and M.config.inline
  local settings = server_settings()
  if settings.ghost.completionItems == nil and settings.ghost.completion_items == nil then
    -- Say which path this client uses, so the model runs once per keystroke.
    settings.ghost.completionItems = not use_inline
  end
  vim.lsp.config('ghost', {
    cmd = M.config.cmd or function(dispatchers, config)
      -- Neovim 0.11 passes only the dispatchers.
      local root = config and config.root_dir or vim.fn.getcwd()
      local cmd = M.find_command(root)
      if not cmd then
        error('ghost-lsp: no `ghost-lsp` executable in $VIRTUAL_ENV, .venv or $PATH; set cmd in setup()')
      end
      return vim.lsp.rpc.start(cmd, dispatchers, { cwd = root })
    end,
    filetypes = M.config.filetypes,
    root_dir = function(bufnr, on_dir)
      local path = vim.api.nvim_buf_get_name(bufnr)
      if M.is_excluded(path) then
        return -- no on_dir(): the client does not attach to this buffer
      end
      on_dir(vim.fs.root(bufnr, { 'pyproject.toml', 'setup.py', '.git' }) or vim.fs.dirname(path))
    end,
    init_options = settings.ghost,
    settings = settings,
    on_attach = on_attach,
  })
  vim.lsp.enable('ghost')

  vim.api.nvim_create_user_command('GhostToggle', function(a)
    M.toggle(a.args == 'on' or (a.args ~= 'off' and nil))
  end, { nargs = '?', complete = function() return { 'on', 'off' } end, desc = 'ghost-lsp: toggle suggestions' })
  vim.api.nvim_create_user_command('GhostRestart', function()
    vim.lsp.enable('ghost', false)
    vim.lsp.enable('ghost', true)
  end, { desc = 'ghost-lsp: restart the server' })
  return M
end

return M
