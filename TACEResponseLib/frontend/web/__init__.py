"""``tace-response web``: the prediction workflow in a browser, on Slicer's own slice views and
segment editor (trame-slicer), one server process per browser session.

Part of the ``frontend`` wing (floor 8): it may import every computation package and the rest of
``frontend`` (MRML output helpers, the panel's form rules and Apply blockers, the background
prediction run); nothing imports it, except the ``web`` command of the CLI, which imports it only
when run. trame, trame-slicer and aiohttp (the ``web`` extra) are imported only inside these
modules, so the library and the Slicer module never need them.

* :mod:`.launcher` — the session manager the command starts: binds 127.0.0.1 unless told
  otherwise, authenticates users when serving a network (:mod:`.auth`), starts one session
  process per page and proxies its page and websocket, receives uploads (:mod:`.uploads`) into
  the session's own folder, and removes that folder when the session ends.
* :mod:`.guards` — what the launcher holds connections, websocket messages, hosts and origins to;
  :mod:`.auth` — users, log-ins, lockouts; :mod:`.uploads` — upload quotas and how uploads are read.
* :mod:`.session_setup` — a session process's settings from its standard input, its reading rules,
  and what it never sends the page (tracebacks, server paths).
* :mod:`.session` — one session process: a trame app with a trame-slicer ``SlicerApp`` (its own
  MRML scene), the case, the form, Predict/Cancel and the downloads; :mod:`.page` is its page,
  :mod:`.viewer` its views (Slicer's layouts, letters, slice numbers, window/level, fitting, labels),
  :mod:`.prewarm` the warm-up of its prediction worker, :mod:`.tumours` where its tumours are and
  whether its segment changed since Predict.
* :mod:`.results` — what the page shows of a result and of the form, and the files it offers (no trame).
"""
