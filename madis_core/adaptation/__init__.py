"""Self-supervised adaptation to a user's own cameras (issue 17), one job per module:

- ``sources``: unlabeled pairs (``UnlabeledPair``: images only) from ``motorcycle``,
  ``folder:ROOT`` or a rosbag2 (``bag_source``);
- ``losses``: photometric, left-right check, occlusion fill, smoothness, pseudo
  labels, drift; ``proxy``: SGBM's confident disparities as labels;
- ``adapter``: ``AdaptConfig`` and ``Adapter``, the step and the offline loop;
- ``online``: ``OnlineAdapter``, the background thread beside live inference;
  ``online_process``: ``OnlineAdapterProcess``, the same in a child process (the node's default);
- ``card``: adapted weights + their card; ``cli``: ``madis adapt``;
- ``shifted_domain``: the benchmark's unseen camera and world.
"""
