"""The default allowlist: the estimator families validated structurally, and the value types they need.

Each estimator type maps to the validator family (runtime/_internal/validators/<family>.py) that
checks it completely; a type named in `trusted_types` but not listed here is loaded unvalidated.
"""

from __future__ import annotations

_FAMILIES: dict[str, tuple[str, ...]] = {
    "linear": (
        "sklearn.linear_model._base.LinearRegression",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.linear_model._stochastic_gradient.SGDClassifier",
        "sklearn.linear_model._stochastic_gradient.SGDRegressor",
        "sklearn.linear_model._ridge.Ridge",
        "sklearn.linear_model._ridge.RidgeClassifier",
        "sklearn.linear_model._coordinate_descent.Lasso",
        "sklearn.linear_model._coordinate_descent.ElasticNet",
        "sklearn.linear_model._perceptron.Perceptron",
        "sklearn.svm._classes.LinearSVC",
        "sklearn.svm._classes.LinearSVR",
    ),
    "svm": (
        "sklearn.svm._classes.SVC",
        "sklearn.svm._classes.SVR",
        "sklearn.svm._classes.NuSVC",
        "sklearn.svm._classes.NuSVR",
    ),
    "trees": (
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.tree._classes.ExtraTreeClassifier",
        "sklearn.tree._classes.ExtraTreeRegressor",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.RandomForestRegressor",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._forest.ExtraTreesRegressor",
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.ensemble._gb.GradientBoostingRegressor",
    ),
    "hist_gb": (
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    ),
    "neighbors": (
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.neighbors._regression.KNeighborsRegressor",
    ),
    "naive_bayes": (
        "sklearn.naive_bayes.GaussianNB",
        "sklearn.naive_bayes.MultinomialNB",
        "sklearn.naive_bayes.BernoulliNB",
        "sklearn.naive_bayes.ComplementNB",
        "sklearn.naive_bayes.CategoricalNB",
    ),
    "mlp": (
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
        "sklearn.neural_network._multilayer_perceptron.MLPRegressor",
    ),
    "preprocessing": (
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._data.MinMaxScaler",
        "sklearn.preprocessing._data.MaxAbsScaler",
        "sklearn.preprocessing._data.RobustScaler",
        "sklearn.preprocessing._data.Normalizer",
        "sklearn.preprocessing._encoders.OneHotEncoder",
        "sklearn.preprocessing._encoders.OrdinalEncoder",
        "sklearn.preprocessing._label.LabelEncoder",
        "sklearn.preprocessing._label.LabelBinarizer",
        "sklearn.preprocessing._polynomial.PolynomialFeatures",
        "sklearn.preprocessing._function_transformer.FunctionTransformer",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.decomposition._pca.PCA",
        "sklearn.dummy.DummyClassifier",
        "sklearn.dummy.DummyRegressor",
    ),
    "text": (
        "sklearn.feature_extraction.text.CountVectorizer",
        "sklearn.feature_extraction.text.TfidfVectorizer",
        "sklearn.feature_extraction.text.TfidfTransformer",
        "sklearn.feature_extraction.text.HashingVectorizer",
    ),
    "composite": (
        "sklearn.pipeline.Pipeline",
        "sklearn.pipeline.FeatureUnion",
        "sklearn.compose._column_transformer.ColumnTransformer",
    ),
}

# Parts that only exist inside an estimator above; its family validator checks them.
_PARTS = (
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.utils.validation.check_array",
    "functools.partial",
    *(f"sklearn.metrics._dist_metrics.{m}Distance64" for m in ("Euclidean", "Manhattan", "Chebyshev", "Minkowski")),
    *(f"sklearn.linear_model._sgd_fast.{n}" for n in (
        "Hinge", "ModifiedHuber", "SquaredHinge", "EpsilonInsensitive", "SquaredEpsilonInsensitive",
    )),
    *(f"sklearn._loss.loss.{n}" for n in (
        "HalfSquaredError", "AbsoluteError", "PinballLoss", "HuberLoss", "HalfPoissonLoss", "HalfGammaLoss",
        "HalfTweedieLoss", "HalfTweedieLossIdentity", "HalfBinomialLoss", "HalfMultinomialLoss", "ExponentialLoss",
    )),
    *(f"sklearn._loss._loss.Cy{n}" for n in (
        "HalfSquaredError", "AbsoluteError", "PinballLoss", "HuberLoss", "HalfPoissonLoss", "HalfGammaLoss",
        "HalfTweedieLoss", "HalfTweedieLossIdentity", "HalfBinomialLoss", "HalfMultinomialLoss", "ExponentialLoss",
    )),
    *(f"sklearn._loss.link.{n}" for n in (
        "IdentityLink", "LogLink", "LogitLink", "HalfLogitLink", "MultinomialLogit", "Interval",
    )),
)

_VALUES = (
    *(f"builtins.{n}" for n in ("dict", "list", "tuple", "set", "str", "int", "float", "bool", "NoneType", "slice")),
    "numpy.ndarray",
    "numpy.dtype",
    *(f"numpy.{n}" for n in (
        "float16", "float32", "float64", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool_", "str_", "bytes_",
    )),
    "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator",
    "numpy.random._pcg64.PCG64",
    "numpy.random.bit_generator.SeedSequence",
    "scipy.sparse._csr.csr_matrix",
    "scipy.sparse._csc.csc_matrix",
    "scipy.sparse._coo.coo_matrix",
    "scipy.sparse._csr.csr_array",
    "scipy.sparse._csc.csc_array",
    "scipy.sparse._coo.coo_array",
)

FAMILY_OF: dict[str, str] = {name: family for family, names in _FAMILIES.items() for name in names}
ALLOWLIST: frozenset[str] = frozenset(FAMILY_OF) | frozenset(_PARTS) | frozenset(_VALUES)


def qualified_name(cls: type) -> str:
    """`module.Class` as skops names a type."""
    return f"{cls.__module__}.{cls.__qualname__}"
