"""LPIPS perceptual distance (AlexNet variant, v0.1), as vendored in SAM and pixel2style2pixel.

Attribute names mirror the official module, so `state_dict()` keys are `net.mean`, `net.std`,
`net.layers.{0,3,6,8,10}.{weight,bias}` and `lin.{0..4}.1.weight`.
"""

import numpy as np
import paddle
import paddle.nn as nn

# Input scaling of the official LPIPS AlexNet: z = (x - mean) / std for x in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# Indices in AlexNet.features of the ReLUs whose outputs LPIPS compares.
ALEX_TAP_INDICES = (1, 4, 7, 9, 11)
ALEX_TAP_CHANNELS = (64, 192, 384, 256, 256)
NORMALIZE_EPS = 1e-10


def _alexnet_features():
    """Build torchvision's AlexNet `features` stack (13 layers, indices as in torchvision)."""
    return nn.Sequential(
        nn.Conv2D(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2D(kernel_size=3, stride=2),
        nn.Conv2D(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2D(kernel_size=3, stride=2),
        nn.Conv2D(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2D(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2D(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2D(kernel_size=3, stride=2),
    )


def normalize_channels(features):
    """Divide each position's feature vector by its L2 norm over channels (+1e-10)."""
    norm = paddle.sqrt(paddle.sum(features * features, axis=1, keepdim=True))
    return features / (norm + NORMALIZE_EPS)


class AlexNetTaps(nn.Layer):
    """AlexNet features that return the unit-normalised maps at the five LPIPS taps."""

    def __init__(self):
        super().__init__()
        self.register_buffer(
            "mean", paddle.to_tensor(LPIPS_SHIFT, dtype="float32").reshape([1, 3, 1, 1]), persistable=True
        )
        self.register_buffer(
            "std", paddle.to_tensor(LPIPS_SCALE, dtype="float32").reshape([1, 3, 1, 1]), persistable=True
        )
        self.layers = _alexnet_features()

    def forward(self, img):
        """Return five normalised maps; for a 256x256 input they are 63, 31, 15, 15, 15 px wide."""
        features = (img - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.layers):
            features = layer(features)
            if index in ALEX_TAP_INDICES:
                taps.append(normalize_channels(features))
            if len(taps) == len(ALEX_TAP_INDICES):
                break  # The final max pool does not feed any tap.
        return taps


def _linear_head(channels):
    # Slot 0 is the official Identity placeholder, so the conv weight key is `lin.K.1.weight`.
    return nn.Sequential(nn.Identity(), nn.Conv2D(channels, 1, kernel_size=1, bias_attr=False))


class LPIPS(nn.Layer):
    """Frozen LPIPS(net='alex'): gradients flow to the inputs only.

    The network has no dropout or batch norm, so train and eval mode give the same output.
    """

    def __init__(self, net="alex"):
        super().__init__()
        if net != "alex":
            raise ValueError(f"LPIPS net={net!r} is not implemented; SAM uses net='alex'")
        self.net = AlexNetTaps()
        self.lin = nn.LayerList([_linear_head(channels) for channels in ALEX_TAP_CHANNELS])
        self.freeze()

    def freeze(self):
        """Mark the network as in eval mode and stop gradients to its weights."""
        # Set the flags directly: Layer.eval() would also switch Paddle's global tracer mode.
        for layer in self.sublayers(include_self=True):
            layer.training = False
        for param in self.parameters():
            param.stop_gradient = True

    def per_layer(self, x, y):
        """Return a [5, B] tensor: the spatial mean of lin_k((fx_k - fy_k)^2) per layer and pair."""
        _check_pair(x, y)
        return self.per_layer_to_features(x, self.net(y))

    def per_layer_to_features(self, x, feats_y):
        """Return per_layer(x, y) given feats_y = self.net(y), so a fixed reference is encoded once."""
        distances = []
        for feat_x, feat_y, head in zip(self.net(x), feats_y, self.lin):
            diff = (feat_x - feat_y) ** 2
            distances.append(head(diff).mean(axis=[1, 2, 3]))  # [B]; the head has one channel
        return paddle.stack(distances)

    def batch_mean_to_features(self, x, feats_y):
        """Return batch_mean(x, y) given feats_y = self.net(y)."""
        return self.per_layer_to_features(x, feats_y).sum() / x.shape[0]

    def forward(self, x, y):
        """Return the LPIPS distance of each pair (x[i], y[i]) as a [B] tensor."""
        return self.per_layer(x, y).sum(axis=0)

    def batch_mean(self, x, y):
        """Return the mean LPIPS distance over the batch, the scalar the official loss returns."""
        return self.per_layer(x, y).sum() / x.shape[0]


def _check_pair(x, y):
    if x.ndim != 4 or x.shape[1] != 3 or list(x.shape) != list(y.shape):
        raise ValueError(
            f"LPIPS expects two images shaped [B, 3, H, W] in [-1, 1] with equal shapes, "
            f"got {list(x.shape)} and {list(y.shape)}"
        )


def lpips_state_from_official(alexnet_state, lin_state):
    """Build an `LPIPS.set_state_dict` input from the two upstream weight files.

    `alexnet_state` is torchvision's AlexNet state_dict (`features.N.*`; `classifier.*` is
    ignored). `lin_state` is PerceptualSimilarity's v0.1 alex file (`linK.model.1.weight`).
    The mean/std buffers are constants of the official code.
    """
    state = {
        "net.mean": np.asarray(LPIPS_SHIFT, dtype=np.float32).reshape(1, 3, 1, 1),
        "net.std": np.asarray(LPIPS_SCALE, dtype=np.float32).reshape(1, 3, 1, 1),
    }
    for key, value in alexnet_state.items():
        if key.startswith("features."):
            state["net.layers." + key[len("features."):]] = value
    for key, value in lin_state.items():
        # "lin3.model.1.weight" -> "lin.3.1.weight"
        head, _, rest = key.partition(".model.")
        if not head.startswith("lin") or not rest:
            raise ValueError(f"unexpected key {key!r} in the LPIPS linear-layer file; expected 'linK.model.1.weight'")
        state[f"lin.{head[len('lin'):]}.{rest}"] = value
    return state


def load_lpips_weights(lpips, state):
    """Load an LPIPS state_dict (arrays keyed like `LPIPS.state_dict()`) into `lpips` strictly.

    Raises WeightsMismatchError naming missing or unexpected keys and shape mismatches.
    """
    from pipeline.checkpoint.pretrained import assign_state

    assign_state(lpips, state, "LPIPS state_dict", "LPIPS (lpips_state_from_official of the upstream files)")
