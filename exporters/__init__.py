"""Model families: one module each (see ``glueforge/schema.py`` for the spec bases).

A family module owns everything about one kind of model, and core code reaches it only
through ``glueforge.registry.family(spec.family)``:

- ``Spec``: its models.yaml schema, a subclass of ``ExtractorSpec`` or ``MatcherSpec`` with
  ``family: Literal["<name>"]``, carrying its facts (input channels and colour, size
  divisor, descriptor size for an extractor; the descriptor size it takes for a matcher);
- ``build(spec, weights, settings) -> nn.Module``: the model with the real weights and its
  export patches (``patches/``) applied, ready to trace:
  - extractor: ``images (N, C, H, W) -> keypoints (N, K, 2) px, scores (N, K), descriptors (N, K, D)``;
  - matcher: ``kpts0, kpts1 (B, K, 2) px, desc0, desc1 (B, K, D) -> matches0 (B, K) int64, mscores0 (B, K)``;
- ``reference(spec, weights, settings)``: the unpatched upstream model with the same
  weights, configured as the export is: the numerical reference of every parity test;
  - extractor: ``images (N, C, H, W) -> [{"keypoints", "scores", "descriptors"}]`` (numpy, per image);
  - matcher: ``(features0, features1) -> {"matches" (S, 2), "mscores" (S,)}``.

``weights`` is the verified local file of the part's weight; ``settings`` the resolved
``glueforge.config.ExportSettings``. Import torch and the upstream code inside these
functions: the registry imports every family module, also on machines without torch.
"""
