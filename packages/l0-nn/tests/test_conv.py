import math

import pytest
import torch
import torch.nn.functional as F
from l0_nn import L0Conv2d, L0DepthwiseConv2d


def test_channel_granularity_has_one_gate_per_output_channel():
    assert tuple(L0Conv2d(3, 8, 3).gates.shape) == (8,)


def test_weight_granularity_has_one_gate_per_weight_including_groups():
    conv = L0Conv2d(4, 6, (3, 2), groups=2, granularity="weight")
    assert tuple(conv.gates.shape) == (6, 2, 3, 2) == tuple(conv.weight.shape)


def test_depthwise_layer_has_one_gate_per_output_channel():
    dw = L0DepthwiseConv2d(5, 3, depth_multiplier=2)
    assert tuple(dw.gates.shape) == (10,)
    assert tuple(dw.weight.shape) == (10, 1, 3, 3)


def test_a_gated_off_channel_outputs_exactly_zero_including_its_bias():
    conv = L0Conv2d(3, 4, 3, padding=1).eval()
    with torch.no_grad():
        conv.bias.fill_(2.0)
        conv.gates.log_alpha.copy_(torch.tensor([-10.0, 5.0, -10.0, 5.0]))
    out = conv(torch.randn(2, 3, 6, 6))
    assert torch.equal(out[:, [0, 2]], torch.zeros(2, 2, 6, 6))
    assert bool((out[:, [1, 3]] != 0).any())


def test_a_gated_off_depthwise_channel_outputs_exactly_zero_including_its_bias():
    dw = L0DepthwiseConv2d(3, 3, padding=1).eval()
    with torch.no_grad():
        dw.bias.fill_(1.5)
        dw.gates.log_alpha.copy_(torch.tensor([5.0, -10.0, 5.0]))
    out = dw(torch.randn(2, 3, 5, 5))
    assert torch.equal(out[:, 1], torch.zeros(2, 5, 5))


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_eval_forward_equals_conv2d_with_gated_weights(granularity):
    torch.manual_seed(0)
    conv = L0Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, granularity=granularity)
    conv.eval()
    with torch.no_grad():
        conv.gates.log_alpha.normal_(0.0, 3.0)
    z = conv.deterministic_gates()
    x = torch.randn(2, 4, 9, 9)
    if granularity == "channel":
        expected = F.conv2d(x, conv.weight, conv.bias, 2, 1, 1, 2) * z.view(1, -1, 1, 1)
    else:
        expected = F.conv2d(x, conv.weight * z, conv.bias, 2, 1, 1, 2)
    assert torch.allclose(conv(x), expected, atol=1e-5)


def test_depthwise_eval_forward_matches_a_grouped_convolution():
    torch.manual_seed(0)
    dw = L0DepthwiseConv2d(3, 3, padding="same", depth_multiplier=2).eval()
    z = dw.deterministic_gates()
    x = torch.randn(2, 3, 7, 7)
    expected = F.conv2d(x, dw.weight * z.view(-1, 1, 1, 1), dw.bias * z, padding="same", groups=3)
    assert torch.allclose(dw(x), expected, atol=1e-6)


def test_channel_l2_penalty_weights_each_filter_and_bias_by_its_probability():
    torch.manual_seed(0)
    conv = L0Conv2d(2, 3, 2)
    with torch.no_grad():
        conv.gates.log_alpha.normal_()
    p = conv.prob_active().detach()
    expected = sum(
        p[o] * (conv.weight[o].detach().pow(2).sum() + conv.bias[o].detach() ** 2) for o in range(3)
    )
    assert math.isclose(conv.l2_penalty().item(), float(expected), rel_tol=1e-5)


def test_channel_active_parameter_count_counts_whole_filters():
    conv = L0Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.gates.log_alpha.copy_(torch.tensor([5.0, -10.0, 5.0, 5.0]))
    assert conv.parameter_count() == 4 * (2 * 9 + 1)
    assert conv.active_parameter_count() == 3 * (2 * 9 + 1)


def test_groups_that_do_not_divide_the_channels_are_rejected():
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        L0Conv2d(3, 4, 3, groups=2)


def test_same_padding_with_stride_is_rejected():
    with pytest.raises(ValueError, match="padding='same' needs stride=1"):
        L0Conv2d(3, 4, 3, stride=2, padding="same")


def test_bad_kernel_size_is_rejected_with_the_argument_name():
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        L0Conv2d(3, 4, 0)


def test_conv_factory_dtype_reaches_weights_bias_and_gates():
    conv = L0Conv2d(1, 2, 3, dtype=torch.float64)
    assert {p.dtype for p in conv.parameters()} == {torch.float64}


def test_conv_state_dict_round_trip_gives_identical_outputs():
    src = L0Conv2d(2, 3, 3)
    with torch.no_grad():
        src.gates.log_alpha.normal_()
    dst = L0Conv2d(2, 3, 3)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(src.eval()(x), dst.eval()(x))
