"""keras.utils.image_dataset_from_directory: image files in one folder per class, as a dataset that
fit, evaluate and predict read batch by batch (Keras 3 returns a tf.data.Dataset; here it is a
keras.utils.PyDataset with the same batches). Decoding needs Pillow: pip install "fastconv[images]"."""
import math
import os

import numpy as np

from fastconv.keras.data_adapters import PyDataset

ALLOWED_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
_PILLOW_MODES = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}


def _image_files(directory, follow_links):
    """The image files under `directory`, in Keras' order: folders sorted by path, files sorted by name."""
    found = []
    for root, _, files in sorted(os.walk(directory, followlinks=follow_links), key=lambda entry: entry[0]):
        found += [os.path.join(root, name) for name in sorted(files) if name.lower().endswith(ALLOWED_FORMATS)]
    return found


def _index(directory, labels, class_names, follow_links):
    """(file paths, integer labels or None, class names), each class's files in turn."""
    if labels != "inferred":
        paths = _image_files(directory, follow_links)
        if labels is None:
            return paths, None, None
        if len(labels) != len(paths):
            raise ValueError(f"labels has {len(labels)} entries but {directory!r} holds {len(paths)} image files "
                             "(labels go with the files in the alphanumeric order of their paths)")
        return paths, np.asarray(labels), [str(name) for name in sorted(set(labels))]
    folders = sorted(name for name in os.listdir(directory)
                     if os.path.isdir(os.path.join(directory, name)) and not name.startswith("."))
    if class_names is not None:
        if not set(class_names) <= set(folders):
            raise ValueError(f"class_names {list(class_names)} must name subdirectories of {directory!r}, "
                             f"which are {folders}")
        folders = list(class_names)
    paths, found_labels = [], []
    for label, folder in enumerate(folders):
        files = _image_files(os.path.join(directory, folder), follow_links)
        paths += files
        found_labels += [label] * len(files)
    return paths, np.asarray(found_labels, np.int64), folders


class ImageDataset(PyDataset):
    """Batches of images (float32, batch x height x width x channels, values 0-255) and their labels,
    read and resized when fit asks for them; `class_names` and `file_paths` as Keras' dataset has them."""

    def __init__(self, file_paths, labels, class_names, label_mode, color_mode, batch_size, resizing, shuffle, seed):
        super().__init__()
        self.file_paths, self.class_names = list(file_paths), class_names
        self._labels, self._label_mode, self._color_mode = labels, label_mode, color_mode
        self._batch_size, self._resizing, self._shuffle = batch_size, resizing, shuffle
        self._order = np.arange(len(self.file_paths))
        self._rng = np.random.default_rng(seed)

    def __len__(self):
        return math.ceil(len(self.file_paths) / self._batch_size)

    def _image(self, path):
        try:
            from PIL import Image
        except ImportError as error:
            raise ImportError('image_dataset_from_directory reads images with Pillow: pip install "fastconv[images]"') \
                from error
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(_PILLOW_MODES[self._color_mode]))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not an image Pillow can read ({error})") from None
        return self._resizing(pixels.reshape(pixels.shape[:2] + (_CHANNELS[self._color_mode],))[None])[0]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of a dataset of {len(self)} batches")
        rows = self._order[index * self._batch_size:(index + 1) * self._batch_size]
        images = np.stack([self._image(self.file_paths[row]) for row in rows]).astype(np.float32, copy=False)
        if self._label_mode is None:
            return (images,)
        labels = self._labels[rows]
        if self._label_mode == "int":
            return images, labels.astype(np.int32)
        if self._label_mode == "binary":
            return images, labels.astype(np.float32).reshape(-1, 1)
        return images, (labels[:, None] == np.arange(len(self.class_names))).astype(np.float32)

    def on_epoch_end(self):
        if self._shuffle:  # a new order of the samples every epoch, from the dataset's seed
            self._order = self._rng.permutation(len(self.file_paths))


def image_dataset_from_directory(directory, labels="inferred", label_mode="int", class_names=None, color_mode="rgb",
                                 batch_size=32, image_size=(256, 256), shuffle=True, seed=None, validation_split=None,
                                 subset=None, interpolation="bilinear", follow_links=False, crop_to_aspect_ratio=False,
                                 pad_to_aspect_ratio=False, data_format=None, verbose=True):
    """Keras 3's `keras.utils.image_dataset_from_directory`: with labels="inferred", one subdirectory per
    class (the classes in alphanumeric order, or class_names'), labels as label_mode says ("int",
    "categorical", "binary" or None), images resized to image_size. With validation_split, subset
    "training", "validation" or "both" (then a (training, validation) pair) from one shuffled list."""
    from fastconv.keras.layers import Resizing
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"directory {directory!r} does not exist or is not a directory")
    if labels not in ("inferred", None) and not isinstance(labels, (list, tuple, np.ndarray)):
        raise ValueError(f'labels must be "inferred", None or a list of integer labels, got {labels!r}')
    if class_names is not None and labels != "inferred":
        raise ValueError('class_names can only be given with labels="inferred"')
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(f'label_mode must be "int", "categorical", "binary" or None, got {label_mode!r}')
    if labels is None or label_mode is None:  # as Keras: no labels, and the files from the whole tree
        labels = label_mode = None
    if color_mode not in _CHANNELS:
        raise ValueError(f'color_mode must be "grayscale", "rgb" or "rgba", got {color_mode!r}')
    if batch_size is None or isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int here (unbatched datasets are not supported), "
                         f"got {batch_size!r}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if data_format not in (None, "channels_last"):
        raise ValueError(f"data_format must be 'channels_last', got {data_format!r}")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be between 0 and 1, got {validation_split!r}")
    if subset not in (None, "training", "validation", "both"):
        raise ValueError(f'subset must be "training", "validation", "both" or None, got {subset!r}')
    if (subset is None) != (validation_split is None):
        raise ValueError("validation_split and subset go together: give both or neither")
    if validation_split and shuffle and seed is None:
        raise ValueError("with validation_split and shuffle, give a seed, so that the training and validation "
                         "subsets are cut from the same shuffled list")
    resizing = Resizing(*image_size, interpolation=interpolation, crop_to_aspect_ratio=crop_to_aspect_ratio,
                        pad_to_aspect_ratio=pad_to_aspect_ratio)
    if seed is None:
        seed = int(np.random.randint(1_000_000))
    paths, found_labels, names = _index(directory, labels, class_names, follow_links)
    if label_mode == "binary" and len(names) != 2:
        raise ValueError(f'label_mode="binary" needs exactly 2 classes, found {names}')
    if shuffle:  # as Keras: the paths and the labels each shuffled by a generator seeded alike
        paths = list(paths)
        np.random.RandomState(seed).shuffle(paths)
        if found_labels is not None:
            np.random.RandomState(seed).shuffle(found_labels)
    if verbose:
        print(f"Found {len(paths)} files" + (f" belonging to {len(names)} classes." if names is not None else "."))

    def dataset(part):
        rows = slice(None)
        if validation_split:
            validation = int(validation_split * len(paths))
            rows = slice(len(paths) - validation, None) if part == "validation" else slice(0, len(paths) - validation)
            if verbose:
                print(f"Using {len(paths[rows])} files for {part}.")
        return ImageDataset(paths[rows], None if found_labels is None else found_labels[rows], names, label_mode,
                            color_mode, batch_size, resizing, shuffle, seed)

    if subset == "both":
        return dataset("training"), dataset("validation")
    return dataset(subset)
