"""Imported once by the multiprocessing fork server, so that each confined child starts warm.

scikit-learn, numpy, joblib and skops take seconds to import; children forked from the fork
server inherit them. Importing this also makes the fork server non-dumpable, so a child cannot
ptrace it or read its memory or environment, and blanks its initial environment block (which
gVisor shows to children regardless).
"""

import gc

import joblib  # noqa: F401
import numpy  # noqa: F401
import sklearn.base  # noqa: F401
import sklearn.ensemble  # noqa: F401
import sklearn.linear_model  # noqa: F401
import sklearn.neighbors  # noqa: F401
import sklearn.pipeline  # noqa: F401
import sklearn.preprocessing  # noqa: F401
import sklearn.svm  # noqa: F401
import sklearn.tree  # noqa: F401
import skops.io  # noqa: F401

import loader._internal.child  # noqa: F401 - what each child runs, compiled once
import loader._internal.skops_writer  # noqa: F401
import loader._internal.unpickle  # noqa: F401
from loader._internal.confine import remember_readable_paths
from loader._internal.process import scrub_initial_environment, set_non_dumpable

loader._internal.child.prepare_warm_up()  # before the paths: it may import lazily
remember_readable_paths()  # after every import above: their folders are what children may read
set_non_dumpable()
scrub_initial_environment()  # gVisor shows a non-dumpable process's environ to its children
# Children share these objects copy-on-write: frozen, the garbage collector never walks them
# (walking writes to each object, which would copy its page into every child).
gc.freeze()
