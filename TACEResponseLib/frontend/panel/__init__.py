"""The module panel's decisions, without Qt: state, forms, Apply blockers, the run, results.

Everything the Slicer panel decides that does not need a widget lives in these modules so
pytest reaches it headless. Widgets are reached by duck typing (``ui.<objectName>.setText``):
the same calls work on Slicer's PythonQt widgets and on PySide6 widgets. The names of the
submodules are re-exported here, so the module file reads ``panel.apply_blockers(...)``.
"""

from TACEResponseLib.frontend.panel.binding import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.dependencies import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.form import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.inputs import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.models import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.results import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.run import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.state import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.results_table import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.logic import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.widgets import *  # noqa: F401,F403
from TACEResponseLib.frontend.panel.view import *  # noqa: F401,F403
from TACEResponseLib.imaging.tumours import IslandRule  # noqa: F401,E402 - the panel's island settings
