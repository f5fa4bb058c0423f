"""README.md's examples say what they print: run them and compare."""
import contextlib
import io
import re
from pathlib import Path

import gpugrad as gg

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_estimator_example_prints_the_figures_its_comment_gives(monkeypatch):
    """The scikit-learn example: reproducible (random_state=0) and true: the printed accuracy is the
    one in its comment, and so is LogisticRegression's on the same split."""
    [code] = [b for b in python_blocks() if "gg.SoftmaxClassifier(random_state=0)" in b]
    comment = re.search(r"# (\d\.\d{4}) on numpy \(LogisticRegression: (\d\.\d{4})\)", code)
    assert comment, code
    monkeypatch.setattr(gg, "SoftmaxClassifier",  # "on numpy": the figure of the numpy backend
                        lambda **kw: gg.estimators.SoftmaxClassifier(backend="numpy", **kw))
    scope, out = {}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), scope)
    assert out.getvalue().strip() == comment.group(1)
    from sklearn.linear_model import LogisticRegression
    peer = scope["make_pipeline"](scope["StandardScaler"](), LogisticRegression())
    assert f"{peer.fit(scope['X_train'], scope['y_train']).score(scope['X_test'], scope['y_test']):.4f}" \
        == comment.group(2)

