"""export_pruned on models with their own forward: residual sums, concatenations (torch.fx)."""

import pytest
import torch
import torch.nn.functional as F
from l0_nn import IndexSelect, L0Conv2d, L0Layer, L0Linear, SparseMLP, export_pruned
from torch import fx, nn

from .conftest import randomise_gates

OPEN, SHUT = 10.0, -10.0


class Block(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), shortcut a 1x1 conv + BN or identity."""

    def __init__(self, cin: int, cout: int, g: torch.Generator) -> None:
        super().__init__()
        self.conv1 = L0Conv2d(cin, cout, 3, padding=1, bias=False, generator=g)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = L0Conv2d(cout, cout, 3, padding=1, bias=False, generator=g)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        if cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                L0Conv2d(cin, cout, 1, bias=False, generator=g), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetLike(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Sequential(
            L0Conv2d(3, 8, 3, padding=1, bias=False, generator=g), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block1 = Block(8, 8, g)
        self.block2 = Block(8, 16, g)
        self.block3 = Block(16, 16, g)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = L0Linear(16, 10, generator=g)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _random_norms(model: nn.Module, seed: int) -> None:
    """Batch norms whose removed channels become non-zero constants (the hard case)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-1, 0.5, generator=g)


def _gates(layer: L0Layer, shut: list[int]) -> None:
    with torch.no_grad():
        layer.gates.log_alpha.fill_(OPEN)
        layer.gates.log_alpha[shut] = SHUT


def _known_model() -> ResNetLike:
    """Fresh batch norms (a removed channel stays exactly 0) and a known set of removed gates."""
    model = ResNetLike(seed=1)
    _gates(model.stem[0], [6, 7])
    _gates(model.block1.conv1, [0, 1, 2])  # inside the block: simply removed
    _gates(model.block1.conv2, [6, 7])  # 6, 7 now dead in both branches of the sum
    _gates(model.block2.conv1, [3])
    _gates(model.block2.conv2, [10, 11, 12, 13, 14, 15])
    _gates(model.block2.shortcut[0], [12, 13, 14, 15])  # 10, 11 stay: alive in the shortcut
    _gates(model.block3.conv1, list(range(8)))
    _gates(model.block3.conv2, [0, 1, 12, 13, 14, 15])  # 0, 1 stay: alive in the identity
    _gates(model.fc, [11])  # the head stops reading channel 11
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exported_resnet_equals_the_gated_eval_model(seed):
    torch.manual_seed(seed)
    model = ResNetLike(seed)
    _random_norms(model, seed)
    randomise_gates(model, seed=seed)
    x = torch.randn(5, 3, 8, 8)
    small = export_pruned(model, example_input=x[:1])
    assert isinstance(small, fx.GraphModule)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)
    report = small.export_report
    assert report.params_after < report.params_before
    assert report.flops_after < report.flops_before


def test_exported_resnet_is_made_of_plain_torch_modules():
    model = _known_model()
    small = export_pruned(model, example_input=torch.zeros(1, 3, 8, 8))
    assert not any(isinstance(m, L0Layer) for m in small.modules())
    leaves = [m for m in small.modules() if not list(m.children())]
    plain = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.AdaptiveAvgPool2d)
    assert all(isinstance(m, (*plain, IndexSelect)) for m in leaves)
    assert all(type(m).__module__.startswith("torch.nn") for m in leaves if isinstance(m, plain))


def test_exported_resnet_keeps_exactly_the_channels_computed_by_hand():
    model = _known_model()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    small = export_pruned(model, example_input=x[:1])
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)
    # Residual streams: stem/block1 keep 6 of 8 (6, 7 dead in both branches); block2 keeps
    # 12 of 16 (12-15 dead in both; 10, 11 alive in the shortcut); block3's sum keeps 11
    # (0-10: the head no longer reads 11, and 12-15 are zero). Inside the blocks: block1 5,
    # block2 15, block3 8 channels.
    assert small.get_submodule("stem.0").out_channels == 6
    assert (small.block1.conv1.in_channels, small.block1.conv1.out_channels) == (6, 5)
    assert (small.block1.conv2.in_channels, small.block1.conv2.out_channels) == (5, 6)
    assert (small.block2.conv2.in_channels, small.block2.conv2.out_channels) == (15, 12)
    assert small.get_submodule("block2.shortcut.0").out_channels == 12
    assert (small.block3.conv1.in_channels, small.block3.conv1.out_channels) == (12, 8)
    assert small.block3.conv2.out_channels == 11
    assert (small.fc.in_features, small.fc.out_features) == (11, 10)
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731 (bias-free convolutions)
    bn = lambda c: 2 * c  # noqa: E731
    expected = (
        conv(3, 6, 3) + bn(6)
        + conv(6, 5, 3) + bn(5) + conv(5, 6, 3) + bn(6)
        + conv(6, 15, 3) + bn(15) + conv(15, 12, 3) + bn(12) + conv(6, 12, 1) + bn(12)
        + conv(12, 8, 3) + bn(8) + conv(8, 11, 3) + bn(11)
        + 11 * 10 + 10
    )  # fmt: skip
    assert sum(p.numel() for p in small.parameters()) == expected
    assert small.export_report.params_after == expected
    before = (
        conv(3, 8, 3) + bn(8)
        + conv(8, 8, 3) + bn(8) + conv(8, 8, 3) + bn(8)
        + conv(8, 16, 3) + bn(16) + conv(16, 16, 3) + bn(16) + conv(8, 16, 1) + bn(16)
        + conv(16, 16, 3) + bn(16) + conv(16, 16, 3) + bn(16)
        + 16 * 10 + 10
    )  # fmt: skip
    assert small.export_report.params_before == before


def test_the_identity_shortcut_is_narrowed_where_only_the_sum_drops_channels():
    small = export_pruned(_known_model(), example_input=torch.zeros(1, 3, 8, 8))
    selects = {n: m.index.tolist() for n, m in small.named_children() if isinstance(m, IndexSelect)}
    assert selects == {"select_block3_shortcut_for_add_2": list(range(11))}


def test_a_removed_channel_with_a_non_zero_constant_stays_where_a_padded_conv_reads_it():
    model = _known_model()
    with torch.no_grad():
        model.block1.bn1.bias.fill_(0.5)  # removed channels 0-2 of block1 become 0.5 after relu
    x = torch.randn(3, 3, 8, 8)
    small = export_pruned(model, example_input=x[:1])
    assert small.block1.conv1.out_channels == 8  # zero padding makes the constant non-uniform
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)


class Dense(nn.Module):
    """A DenseNet-like concatenation, a view-flatten, an in-place sum and a squeeze-excitation."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.a = L0Conv2d(2, 4, 3, padding=1, generator=g)
        self.b = L0Conv2d(6, 3, 1, generator=g)
        self.se = L0Linear(9, 9, granularity="output", generator=g)
        self.fc = L0Linear(9 * 4 * 4, 3, generator=g)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = torch.cat([x, y], dim=1)
        z = torch.cat((z, self.b(z)), 1)
        scale = torch.sigmoid(self.se(z.mean((2, 3))))
        z = z * scale.view(scale.size(0), -1, 1, 1)
        z = F.max_pool2d(z, 2)
        z += 1.0
        return self.fc(z.view(z.size(0), -1))


def test_concatenation_view_flatten_and_gated_scales_export_exactly():
    model = Dense()
    randomise_gates(model, seed=2)
    x = torch.randn(4, 2, 8, 8)
    small = export_pruned(model, example_input=x[:1])
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)


def test_concatenated_channels_removed_in_one_part_leave_only_that_part():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = L0Conv2d(1, 3, 1)
            self.b = L0Conv2d(1, 2, 1)
            self.head = L0Conv2d(5, 1, 1)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], 1))

    model = Cat()
    _gates(model.a, [1])
    _gates(model.b, [0])
    _gates(model.head, [])
    x = torch.randn(2, 1, 4, 4)
    small = export_pruned(model, example_input=x)
    assert (small.a.out_channels, small.b.out_channels, small.head.in_channels) == (2, 1, 3)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-6)


def test_a_module_called_twice_and_a_channel_count_read_keep_their_channels_exactly():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = L0Conv2d(3, 3, 3, padding=1)
            self.fc = L0Linear(3, 2, granularity="output")

        def forward(self, x):
            y = self.conv(self.conv(x))
            return self.fc(y.mean((2, 3))) * y.shape[1]

    model = Twice()
    randomise_gates(model, seed=1)
    x = torch.randn(2, 3, 5, 5)
    small = export_pruned(model, example_input=x)
    assert small.conv.out_channels == 3
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)


def test_a_sequential_of_custom_blocks_is_traced_and_the_export_can_be_saved(tmp_path):
    model = nn.Sequential(ResNetLike(seed=4))
    randomise_gates(model, seed=4)
    x = torch.randn(2, 3, 8, 8)
    small = export_pruned(model, example_input=x)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)
    torch.save(small, tmp_path / "small.pt")
    loaded = torch.load(tmp_path / "small.pt", weights_only=False)
    assert torch.equal(loaded(x), small(x))


def test_an_untraceable_forward_raises_a_type_error_naming_the_module_and_the_fallback():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = L0Conv2d(1, 2, 1)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace it
                return self.conv(x)
            return self.conv(-x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Branchy()
            self.head = L0Linear(2, 1)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    with pytest.raises(
        TypeError, match=r"could not trace 'body' \(Branchy\).*prune_model\(model\)"
    ):
        export_pruned(Net(), example_input=torch.zeros(1, 1, 4, 4))


def test_a_forward_with_two_inputs_raises_a_value_error():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = L0Linear(3, 2)

        def forward(self, x, y):
            return self.fc(x + y)

    with pytest.raises(ValueError, match="one tensor input.*2 required inputs"):
        export_pruned(Two(), example_input=torch.zeros(1, 3))


def test_a_custom_forward_starting_with_a_linear_layer_needs_no_example_input():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = L0Linear(6, 6, granularity="output")
            self.fc2 = L0Linear(6, 2)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)) + x)

    model = Residual()
    randomise_gates(model, seed=3)
    small = export_pruned(model)
    x = torch.randn(7, 6)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-6)


def test_a_chain_wrapped_in_a_custom_forward_exports_like_the_chain():
    chain = SparseMLP(12, [10, 8], 3, generator=torch.Generator().manual_seed(0))
    randomise_gates(chain, seed=5)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = chain

        def forward(self, x):
            return self.mlp(x)

    direct = export_pruned(chain)
    traced = export_pruned(Wrapper())
    assert isinstance(direct, nn.Sequential)  # chains keep their nn.Sequential export
    assert direct.export_report.params_after == traced.export_report.params_after
    assert direct.export_report.flops_after == traced.export_report.flops_after
    x = torch.randn(4, 12)
    assert torch.allclose(direct(x), traced(x), atol=1e-6)
