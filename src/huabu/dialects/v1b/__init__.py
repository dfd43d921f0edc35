"""The ``api/v1b`` generation API of remagi.io and miaohua (specs 000 and 001, identical):
``get_token``, ``task_submit``, ``task_result``, ``get_generation_form``. Spec 001's training
routes are in ``v1b_training``.

The token travels in the JSON body. It is a login session from ``get_token`` (or a huabu API
key, which works too). ``init_img`` is a URL: huabu's own image links are read from storage,
others fetched with SSRF protection. Errors: ``{"code": <HTTP status>, "msg": ...,
"error_msg": ..., "param": ...}``.

Spec 001's training routes of the ``api/v1b`` dialect: ``upload_imgs``, ``dataset``,
``dataset_all``, ``train_submit``, ``train_progress``, ``get_train_form``.

Uploaded images come back as huabu's signed links; a dataset takes such links (or any image
URL, fetched with SSRF protection). A trained model is used by its name as ``model_name`` in
``task_submit`` (its base model, its LoRA and its trigger word) and, in every dialect, as a
LoRA. Beyond the spec, ``train_submit`` takes ``steps``, ``rank``, ``learning_rate``,
``resolution`` and ``seed``; a training is cancelled through the native API.
"""

from __future__ import annotations

from huabu.dialects.v1b.translate import (
    dataset_out,
    from_native,
    generation_form,
    parse_size,
    progress_out,
    renamed,
    to_native,
    training_renamed,
    training_to_native,
)
from huabu.dialects.v1b.wire import (
    ORIGIN,
    PREFIX,
    DatasetAllIn,
    DatasetId,
    DatasetIn,
    DatasetOk,
    DatasetOut,
    DatasetPage,
    ErrorOut,
    FormOut,
    ImageOut,
    Ok,
    ProgressOut,
    ResultIn,
    ResultOut,
    SubmitIn,
    SubmitOut,
    TaskId,
    TokenIn,
    TokenOut,
    TrainForm,
    TrainFormOk,
    TrainOk,
    TrainProgressIn,
    TrainSubmitIn,
    UploadImgsIn,
    UrlsOk,
    render_error,
)

__all__ = [
    "DatasetAllIn",
    "DatasetId",
    "DatasetIn",
    "DatasetOk",
    "DatasetOut",
    "DatasetPage",
    "ErrorOut",
    "FormOut",
    "ImageOut",
    "ORIGIN",
    "Ok",
    "PREFIX",
    "ProgressOut",
    "ResultIn",
    "ResultOut",
    "SubmitIn",
    "SubmitOut",
    "TaskId",
    "TokenIn",
    "TokenOut",
    "TrainForm",
    "TrainFormOk",
    "TrainOk",
    "TrainProgressIn",
    "TrainSubmitIn",
    "UploadImgsIn",
    "UrlsOk",
    "dataset_out",
    "from_native",
    "generation_form",
    "parse_size",
    "progress_out",
    "renamed",
    "render_error",
    "to_native",
    "training_renamed",
    "training_to_native",
]
