--- :checkhealth ghost
local M = {}

function M.check()
  local ghost = require('ghost')
  vim.health.start('ghost-lsp')
  if vim.fn.has('nvim-0.11') == 0 then
    vim.health.error('Neovim 0.11 or newer is needed (vim.lsp.config / vim.lsp.enable)')
    return
  end
  if vim.lsp.inline_completion then
    vim.health.ok('inline completion (ghost text) available: accept with ' .. ghost.config.accept_key)
  else
    vim.health.info('no vim.lsp.inline_completion (Neovim < 0.12): suggestions use the completion menu')
  end
  local cmd = ghost.config.cmd or ghost.find_command(vim.fn.getcwd())
  if type(cmd) == 'table' and vim.fn.executable(cmd[1]) == 1 then
    local out = vim.system({ cmd[1], '--version' }, { text = true }):wait(10000)
    vim.health.ok(('server: %s (%s)'):format(cmd[1], vim.trim(out.stdout or out.stderr or '')))
  elseif type(cmd) == 'function' then
    vim.health.info('server started by a custom cmd function')
  else
    vim.health.error('`ghost-lsp` not found', { 'pip install ghost-lsp into the project venv, or set cmd in setup()' })
  end
  local clients = vim.lsp.get_clients({ name = 'ghost' })
  if #clients == 0 then
    vim.health.info('no ghost-lsp client running (open a ' .. table.concat(ghost.config.filetypes, '/') .. ' file)')
  end
  for _, c in ipairs(clients) do
    vim.health.ok(('client %d: %s, buffers %s, suggestions %s'):format(
      c.id, c.initialized and 'initialized' or 'starting', vim.inspect(vim.tbl_keys(c.attached_buffers)),
      ghost.enabled and 'on' or 'off'))
    local res = c.initialized and c:request_sync('ghost/health', nil, 2000) or nil
    local h = res and res.result
    if h and h.model ~= vim.NIL and h.model then
      vim.health.ok(('model: %s%s'):format(h.model, h.learned_model and ' (learned from this workspace)' or ''))
    end
  end
end

return M
