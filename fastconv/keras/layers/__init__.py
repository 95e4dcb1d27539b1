"""Keras layers (channels_last, float32)."""
from fastconv.keras.layers.base import Input, InputLayer, Layer
from fastconv.keras.layers.conv import Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D
from fastconv.keras.layers.core import (
    ELU, PReLU, Activation, Dense, Dropout, Flatten, GaussianNoise, Identity, Lambda, LeakyReLU, ReLU, Rescaling,
    Reshape, Softmax, SpatialDropout2D,
)
from fastconv.keras.layers.merging import (
    Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract,
    add, average, concatenate, maximum, minimum, multiply, subtract,
)
from fastconv.keras.layers.normalization import BatchNormalization, GroupNormalization, LayerNormalization
from fastconv.keras.layers.pooling import (
    AveragePooling2D, AvgPool2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPool2D, MaxPooling2D,
)
from fastconv.keras.layers.reshaping import Cropping2D, Permute, UpSampling2D, ZeroPadding2D
from fastconv.keras.layers.preprocessing import (
    CenterCrop, Normalization, RandomBrightness, RandomContrast, RandomCrop, RandomFlip, RandomRotation,
    RandomTranslation, RandomZoom, Resizing,
)

Convolution2D = Conv2D
SeparableConvolution2D = SeparableConv2D
Convolution2DTranspose = Conv2DTranspose

# The only classes a saved model may name; loading never imports or calls anything else.
LAYER_CLASSES = {cls.__name__: cls for cls in (
    InputLayer, Dense, Conv2D, Conv2DTranspose, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten,
    Reshape, Dropout, BatchNormalization, Activation, ReLU, LeakyReLU, Softmax, Add, Subtract, Multiply, Average,
    Maximum, Minimum, Concatenate, Rescaling, ZeroPadding2D, Cropping2D, UpSampling2D, SpatialDropout2D,
    RandomFlip, RandomRotation, RandomTranslation, RandomZoom, RandomContrast, RandomBrightness, RandomCrop,
    Resizing, CenterCrop, Normalization, ELU, Identity, LayerNormalization, Permute, PReLU, GaussianNoise,
    DepthwiseConv2D, SeparableConv2D, GroupNormalization,
)}

__all__ = [
    "CenterCrop", "Normalization", "RandomBrightness", "RandomContrast", "RandomCrop", "RandomFlip", "RandomRotation",
    "RandomTranslation", "RandomZoom", "Resizing",
    "Activation", "Add", "Average", "AveragePooling2D", "AvgPool2D", "BatchNormalization", "Concatenate", "Conv2D",
    "Conv2DTranspose", "Convolution2D", "Convolution2DTranspose", "Cropping2D", "Dense", "DepthwiseConv2D", "Dropout", "ELU", "Flatten", "GaussianNoise", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GroupNormalization",
    "Identity", "Input", "InputLayer", "Lambda", "Layer", "LayerNormalization", "LeakyReLU", "MaxPool2D", "MaxPooling2D", "Maximum", "Minimum", "Multiply",
    "Permute", "PReLU", "ReLU", "Rescaling", "Reshape", "SeparableConv2D", "Softmax", "SpatialDropout2D", "Subtract", "UpSampling2D", "ZeroPadding2D",
    "add", "average", "concatenate", "maximum", "minimum", "multiply", "subtract",
]
