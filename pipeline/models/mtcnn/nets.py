"""MTCNN's three cascaded networks (PNet, RNet, ONet) with the official layer names.

Parameter names equal those of the official PyTorch MTCNN (pixel2style2pixel) and of its
shipped `.npy` weight files, except that `paddle.nn.Linear` stores weights as [in, out]
where the official files store [out, in]. `load_official_weights` transposes them.
"""

import numpy as np
import paddle.nn as nn
import paddle.nn.functional as F


class TransposedFlatten(nn.Layer):
    """Flatten [B, C, H, W] to [B, C*W*H] after swapping H and W.

    The official weights of the first fully connected layer expect the features in
    (C, W, H) order.
    """

    def forward(self, x):
        x = x.transpose([0, 1, 3, 2])
        return x.reshape([x.shape[0], -1])


class PReLU(nn.Layer):
    """Channel-wise PReLU whose slope parameter is named `weight`, as in PyTorch.

    paddle.nn.PReLU names it `_weight`, which would break the official key names.
    """

    def __init__(self, num_channels, init=0.25):
        super().__init__()
        self.weight = self.create_parameter([num_channels], default_initializer=nn.initializer.Constant(init))

    def forward(self, x):
        # The channel axis is 1 for both [B, C, H, W] and [B, C] inputs.
        return F.prelu(x, self.weight)


def _max_pool(kernel_size):
    # ceil_mode keeps the partial window at the border, as in the official nets.
    return nn.MaxPool2D(kernel_size, stride=2, ceil_mode=True)


class PNet(nn.Layer):
    """Proposal network: a fully convolutional 12x12-window face classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            ("conv1", nn.Conv2D(3, 10, 3)),
            ("prelu1", PReLU(10)),
            ("pool1", _max_pool(2)),
            ("conv2", nn.Conv2D(10, 16, 3)),
            ("prelu2", PReLU(16)),
            ("conv3", nn.Conv2D(16, 32, 3)),
            ("prelu3", PReLU(32)),
        )
        self.conv4_1 = nn.Conv2D(32, 2, 1)
        self.conv4_2 = nn.Conv2D(32, 4, 1)

    def forward(self, images):
        """Return (box offsets [B,4,h,w], face probabilities [B,2,h,w]) for images [B,3,H,W].

        h = ceil((H - 2) / 2) - 4, and likewise w.
        """
        features = self.features(images)
        logits = self.conv4_1(features)
        offsets = self.conv4_2(features)
        # NOTE: the official PNet takes the softmax over the last axis (image width), not over
        # the 2 classes. The detector's thresholds were tuned with this, so it is kept.
        probs = F.softmax(logits, axis=-1)
        return offsets, probs


class RNet(nn.Layer):
    """Refinement network on 24x24 crops."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            ("conv1", nn.Conv2D(3, 28, 3)),
            ("prelu1", PReLU(28)),
            ("pool1", _max_pool(3)),
            ("conv2", nn.Conv2D(28, 48, 3)),
            ("prelu2", PReLU(48)),
            ("pool2", _max_pool(3)),
            ("conv3", nn.Conv2D(48, 64, 2)),
            ("prelu3", PReLU(64)),
            ("flatten", TransposedFlatten()),  # [B,64,3,3] -> [B,576]
            ("conv4", nn.Linear(576, 128)),
            ("prelu4", PReLU(128)),
        )
        self.conv5_1 = nn.Linear(128, 2)
        self.conv5_2 = nn.Linear(128, 4)

    def forward(self, crops):
        """Return (box offsets [B,4], face probabilities [B,2]) for crops [B,3,24,24]."""
        features = self.features(crops)
        probs = F.softmax(self.conv5_1(features), axis=-1)
        offsets = self.conv5_2(features)
        return offsets, probs


class ONet(nn.Layer):
    """Output network on 48x48 crops; also predicts 5 landmarks."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            ("conv1", nn.Conv2D(3, 32, 3)),
            ("prelu1", PReLU(32)),
            ("pool1", _max_pool(3)),
            ("conv2", nn.Conv2D(32, 64, 3)),
            ("prelu2", PReLU(64)),
            ("pool2", _max_pool(3)),
            ("conv3", nn.Conv2D(64, 64, 3)),
            ("prelu3", PReLU(64)),
            ("pool3", _max_pool(2)),
            ("conv4", nn.Conv2D(64, 128, 2)),
            ("prelu4", PReLU(128)),
            ("flatten", TransposedFlatten()),  # [B,128,3,3] -> [B,1152]
            ("conv5", nn.Linear(1152, 256)),
            ("drop5", nn.Dropout(0.25)),
            ("prelu5", PReLU(256)),
        )
        self.conv6_1 = nn.Linear(256, 2)
        self.conv6_2 = nn.Linear(256, 4)
        self.conv6_3 = nn.Linear(256, 10)

    def forward(self, crops):
        """Return (landmarks [B,10], box offsets [B,4], face probabilities [B,2]).

        Landmarks are relative to the crop: 5 x values in box widths, then 5 y values in box
        heights.
        """
        features = self.features(crops)
        probs = F.softmax(self.conv6_1(features), axis=-1)
        offsets = self.conv6_2(features)
        landmarks = self.conv6_3(features)
        return landmarks, offsets, probs


def linear_weight_keys(net):
    """Return the state_dict keys of every nn.Linear weight in `net` (stored [in, out])."""
    return {f"{name}.weight" for name, layer in net.named_sublayers() if isinstance(layer, nn.Linear)}


def load_official_weights(net, official_state):
    """Load a state dict in the official PyTorch layout into `net`, strictly.

    `official_state` maps the official keys to arrays; nn.Linear weights are [out, in] and
    get transposed. Raises WeightsMismatchError naming missing or unexpected keys and shape
    mismatches.
    """
    from pipeline.checkpoint.pretrained import assign_state

    transposed = linear_weight_keys(net)
    state = {key: np.asarray(value).T if key in transposed else np.asarray(value)
             for key, value in official_state.items()}
    assign_state(net, state, f"official {type(net).__name__} state dict", f"MTCNN {type(net).__name__}")
