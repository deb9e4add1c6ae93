"""DEX age classifier: a VGG-16 layout that predicts a distribution over 101 ages (0..100 years).

Layer names follow the official module (`conv1_1` ... `conv5_3`, `fc6`, `fc7`, `fc8_101`), so
`state_dict()` keys equal the official keys after the official loader's '-' -> '_' rename.
`fc*` are `paddle.nn.Linear` and store their weights as [in, out], the transpose of the official
[out, in] layout.
"""

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

NUM_AGE_BINS = 101
DEX_INPUT_SIZE = 224

# Number of 3x3 convolutions in each of the five VGG-16 stages.
_CONVS_PER_STAGE = (2, 2, 3, 3, 3)


class DexVGG(nn.Layer):
    """VGG-16 with ReLU after every conv, fc6 and fc7, 2x2 max pools and a 101-way fc8.

    Args:
        conv_widths: output channels of the five stages (official 64, 128, 256, 512, 512).
        fc_width: width of fc6 and fc7 (official 4096).
        num_classes: number of age bins (official 101).
        input_size: side of the square input; fc6 reads C * (input_size / 32)^2 features.
    """

    def __init__(
        self,
        conv_widths=(64, 128, 256, 512, 512),
        fc_width=4096,
        num_classes=NUM_AGE_BINS,
        input_size=DEX_INPUT_SIZE,
    ):
        super().__init__()
        if len(conv_widths) != len(_CONVS_PER_STAGE):
            raise ValueError(
                f"conv_widths={tuple(conv_widths)} has {len(conv_widths)} entries; "
                f"pass one width per VGG stage ({len(_CONVS_PER_STAGE)} entries)"
            )
        if input_size % 32 != 0:
            raise ValueError(f"input_size={input_size} is not a multiple of 32; five 2x2 pools need one")

        # Conv names per stage, e.g. [["conv1_1", "conv1_2"], ...]; each stage ends with a pool.
        self.stage_conv_names = []
        in_channels = 3
        for stage, (num_convs, width) in enumerate(zip(_CONVS_PER_STAGE, conv_widths), start=1):
            names = [f"conv{stage}_{index}" for index in range(1, num_convs + 1)]
            for name in names:
                self.add_sublayer(name, nn.Conv2D(in_channels, width, kernel_size=3, padding=1))
                in_channels = width
            self.stage_conv_names.append(names)

        pooled_side = input_size // 32
        self.fc6 = nn.Linear(in_channels * pooled_side * pooled_side, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width)
        self.fc8_101 = nn.Linear(fc_width, num_classes)

    def forward(self, img):
        """Return the age logits [B, num_classes] of `img` [B, 3, input_size, input_size]."""
        features = img
        for names in self.stage_conv_names:
            for name in names:
                features = F.relu(getattr(self, name)(features))
            features = F.max_pool2d(features, kernel_size=2, stride=2)

        # Flatten in NCHW order ([B, C*h*w]), as the official view(B, -1) does.
        features = paddle.flatten(features, start_axis=1)
        features = F.relu(self.fc6(features))
        features = F.relu(self.fc7(features))
        return self.fc8_101(features)



def load_official_dex_weights(dex, official_state):
    """Load an official DEX state_dict (arrays by key) into `dex` strictly.

    Accepts the file's top level `{'state_dict': ...}` or the inner dict. Every '-' in a key
    becomes '_', as in the official loader, and the fc weights are transposed to [in, out].
    Raises WeightsMismatchError naming missing or unexpected keys and shape mismatches.
    """
    from pipeline.checkpoint.pretrained import assign_state

    if "state_dict" in official_state:
        official_state = official_state["state_dict"]
    state = {}
    for key, value in official_state.items():
        key = key.replace("-", "_")
        value = np.asarray(value)
        if key.startswith("fc") and key.endswith(".weight"):
            value = value.T  # official nn.Linear is [out, in]
        state[key] = value
    assign_state(dex, state, "official DEX state_dict", "dex_age_classifier.pth")
