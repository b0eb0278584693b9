"""DINO's networks (Caron et al., ICCV 2021): a ViT with a projection head, twice.

`apply({"params": p}, views)` runs the student on every view and the teacher on the first
`num_global_views` and returns `(student_logits [V, B, K], teacher_logits [G, B, K])`.
Params are `{"student": {"img", "head"}, "teacher": {"img", "head"}, "center": [K]}`: the
teacher is the student's exponential moving average and the center the running mean of the
teacher's outputs; neither is trained by the optimizer (`methods` freezes them by schedule and
updates them after each step). The pretrained encoder a run hands on is `teacher/img`, the
network DINO evaluates.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from wlsft_jax.models import vit


class Head(nn.Module):
    """DINO's head: MLP to a bottleneck, L2-normalised, then a weight-normalised linear layer
    onto `num_prototypes` logits (its gain fixed at 1, as DINO's `norm_last_layer`)."""
    hidden_dim: int
    bottleneck_dim: int
    num_prototypes: int

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.hidden_dim, name="fc1")(x), approximate=False)
        x = nn.gelu(nn.Dense(self.hidden_dim, name="fc2")(x), approximate=False)
        x = nn.Dense(self.bottleneck_dim, name="fc3")(x)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
        prototypes = self.param("prototypes", nn.initializers.truncated_normal(0.02),
                                (self.bottleneck_dim, self.num_prototypes))
        prototypes = prototypes / jnp.linalg.norm(prototypes, axis=0, keepdims=True)
        return x @ prototypes


class Network(nn.Module):
    """Backbone + head: images -> (prototype logits, backbone out)."""
    img: dict
    head: dict

    @nn.compact
    def __call__(self, images):
        features, out = vit.Model(**self.img, name="img")(images)
        return Head(**self.head, name="head")(features), out


class Model(nn.Module):
    """Student and teacher networks of the same shape, and the teacher's output center."""
    img: dict
    head: dict
    num_global_views: int = 2

    @nn.nowrap
    def image_tower(self) -> vit.Model:
        """The backbone alone (apply it to `params["teacher"]["img"]`)."""
        return vit.Model(**self.img)

    @nn.compact
    def __call__(self, views):
        student = Network(self.img, self.head, name="student")
        teacher = Network(self.img, self.head, name="teacher")
        self.param("center", nn.initializers.zeros, (self.head["num_prototypes"],))
        student_logits = jnp.stack([student(view)[0] for view in views])
        teacher_logits = jnp.stack([teacher(view)[0] for view in views[:self.num_global_views]])
        return student_logits, jax.lax.stop_gradient(teacher_logits)
