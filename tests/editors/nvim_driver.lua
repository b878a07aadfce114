-- Drives a real headless Neovim through the shipped editors/nvim plugin; run by
-- tests/editors/test_nvim.py. Reads GHOST_TEST_* from the environment, writes a JSON
-- report to GHOST_TEST_OUT and quits. Steps run in a coroutine that yields to the event
-- loop (vim.defer_fn), so keys fed with nvim_feedkeys(..., 'mt') are really typed.
local env = vim.env
local out = { mode = env.GHOST_TEST_MODE, steps = {} }

local function finish()
  local f = assert(io.open(env.GHOST_TEST_OUT, 'w'))
  f:write(vim.json.encode(out))
  f:close()
  vim.cmd('qa!')
end

local function sleep(ms)
  local co = coroutine.running()
  vim.defer_fn(function() coroutine.resume(co) end, ms)
  coroutine.yield()
end

local function wait_for(cond, timeout_ms)
  local waited = 0
  while waited < timeout_ms do
    local v = cond()
    if v then return v end
    sleep(25)
    waited = waited + 25
  end
  return nil
end

local function feed(keys)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), 'mt', false)
end

-- As displayed (control characters as ^X), the form extmark virt_text comes back in.
local function lines()
  return vim.tbl_map(vim.fn.strtrans, vim.api.nvim_buf_get_lines(0, 0, -1, false))
end

local menu = env.GHOST_TEST_MODE == 'menu'
local ghost = require('ghost').setup({
  cmd = vim.json.decode(env.GHOST_TEST_CMD),
  settings = vim.json.decode(env.GHOST_TEST_SETTINGS),
  inline = not menu,
})

local ns = vim.api.nvim_create_namespace('nvim.lsp.inline_completion')

local function ghost_text()
  local marks = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
  local m = marks[1]
  if not m or not m[4].virt_text then return nil end
  local text = {}
  for _, chunk in ipairs(m[4].virt_text) do table.insert(text, chunk[1]) end
  local parts = { table.concat(text) }
  for _, vl in ipairs(m[4].virt_lines or {}) do
    local t = {}
    for _, chunk in ipairs(vl) do table.insert(t, chunk[1]) end
    table.insert(parts, table.concat(t))
  end
  return { row = m[2], col = m[3], lines = parts }
end

local function run()
  -- An excluded file first: no client may attach to it.
  vim.cmd.edit(env.GHOST_TEST_EXCLUDED)
  sleep(300)
  out.excluded_clients = #vim.lsp.get_clients({ bufnr = 0, name = 'ghost' })

  vim.cmd.edit(env.GHOST_TEST_FILE)
  local client = wait_for(function()
    local c = vim.lsp.get_clients({ bufnr = 0, name = 'ghost' })[1]
    return c and c.initialized and c
  end, 15000)
  if not client then
    out.error = 'ghost-lsp client did not attach'
    return
  end
  out.filetype = vim.bo.filetype
  out.inline_enabled = vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.is_enabled({ bufnr = 0 })
  out.server_caps = {
    inline = client.server_capabilities.inlineCompletionProvider ~= nil,
    completion = client.server_capabilities.completionProvider ~= nil,
  }

  for _, spot in ipairs(vim.json.decode(env.GHOST_TEST_SPOTS)) do
    local row, typed = spot[1], spot[2] -- 1-based line to open below, text to type
    local before = lines()
    vim.api.nvim_win_set_cursor(0, { row, 0 })
    feed('o' .. typed)
    wait_for(function() return vim.api.nvim_get_mode().mode == 'i' and vim.api.nvim_get_current_line() == typed end, 3000)
    local step = { typed = typed, line = row + 1 }
    table.insert(out.steps, step)
    if menu then
      vim.o.completeopt = 'menuone,noinsert' -- show even one item; <C-y> accepts it
      feed('<C-Space>') -- the plugin's menu_key: vim.lsp.completion.get()
      local items = wait_for(function()
        local info = vim.fn.complete_info({ 'pum_visible', 'items' })
        return info.pum_visible == 1 and #info.items > 0 and info.items
      end, 4000)
      if items then
        step.menu = vim.tbl_map(function(i) return i.word end, items)
        feed('<C-y>')
        wait_for(function() return vim.api.nvim_get_current_line() ~= typed end, 3000)
        sleep(300) -- CompleteDone runs the item's command (ghost.accept)
        step.after = lines()
        step.before = before
        out.accepted = step
        break
      end
    else
      local shown = wait_for(ghost_text, 4000)
      if shown then
        step.ghost = shown
        step.cursor = vim.api.nvim_win_get_cursor(0)
        feed('<Tab>')
        wait_for(function() return vim.api.nvim_get_current_line() ~= typed end, 3000)
        -- Checked at once: 200 ms later the moved cursor asks for the next suggestion.
        step.extmarks_after = #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {})
        sleep(300) -- accept runs the item's command (ghost.accept) after inserting
        step.after = lines()
        step.before = before
        out.accepted = step
        break
      end
    end
    feed('<Esc>')
    sleep(50)
    vim.api.nvim_buf_set_lines(0, 0, -1, false, before) -- undo the typing for the next spot
  end

  if out.accepted and not menu then
    -- <Tab> with no ghost text types a Tab (the fallback of the accept key).
    feed('<Esc>')
    sleep(50)
    vim.api.nvim_win_set_cursor(0, { 1, 0 })
    feed('O<Tab>x<Esc>')
    wait_for(function() return vim.api.nvim_get_mode().mode == 'n' end, 2000)
    sleep(50)
    out.tab_fallback_line = vim.api.nvim_buf_get_lines(0, 0, 1, false)[1]
    -- :GhostToggle turns ghost text off for the buffer
    vim.cmd('GhostToggle off')
    out.inline_after_toggle = vim.lsp.inline_completion.is_enabled({ bufnr = 0 })
    vim.cmd('GhostToggle on')
  end

  -- Stop the server cleanly so it flushes the feedback log.
  vim.cmd('stopinsert')
  client:stop()
  out.stopped = wait_for(function() return client:is_stopped() end, 10000) ~= nil
end

coroutine.wrap(function()
  local ok, err = pcall(run)
  if not ok then out.error = tostring(err) end
  finish()
end)()
