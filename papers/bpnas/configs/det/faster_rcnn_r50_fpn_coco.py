# BP-NAS detection (supp. Table 2): Faster R-CNN R50-FPN on COCO, searched at B_max = 4.25 average bits.
#   mpq bpnas det-search -c faster_rcnn_r50_fpn_coco data.root=/data/coco   -> RUN_DIR/search/, policy.json
#   mpq bpnas det-train  -c faster_rcnn_r50_fpn_coco data.root=/data/coco   -> RUN_DIR/train/, results.json
# mmdet's own config is the base; `model` becomes BP-NAS's registered detector (papers.bpnas.det.mm).
_base_ = ["mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"]

custom_imports = dict(imports=["papers.bpnas.det.mm"], allow_failed_imports=False)

model = dict(
    type="BpnasFasterRCNN",
    # model.bpnas: the search space and objective (papers.bpnas.det.mm.DetBpnas); the stages set `mode`
    bpnas=dict(
        pairs=[[3, 5], [4, 3], [4, 4], [4, 6], [4, 8]],  # the pairs of supp. Table 2
        paths="sample",
        b_max=4.25,  # not in the supplementary; Table 2's configuration averages 4.033 bits here
        mu=0.01,
        prob1_weight=0.1,
        count_size=[800, 1344],  # (H, W) of E(SN)'s MAC count: a 1333x800 COCO image padded to 32
        num_rois=None,  # box-head RoIs in the count: the R-CNN sampler's 512
    ),
)

# The stages (papers.bpnas.det.run): run directory, data, schedules. `data.root=...` and `run.out_dir=...` on
# the command line set data_root / out_dir; any other KEY=VALUE is an mmengine config key (a.b.c=value).
bpnas_run = dict(
    out_dir=None,  # None: runs/bpnas/<config name>
    data_root=None,  # COCO root (core.data.coco layout); required unless `fixture` is set
    fixture=dict(),  # make_tiny_coco kwargs (papers.bpnas.det.fixture): generate the data in RUN_DIR/data
    dataset="coco",
    table_row=None,
    seed=0,
    resume=True,  # continue from the last checkpoint in the stage's work dir
    repair=True,  # derive: cheapen an argmax network beyond B_max (derive.repair of the classification)
    search=dict(
        epochs=12,  # mmdet's 1x schedule (lr x0.1 at epochs 8 and 11, the base's param_scheduler)
        warmup_epochs=2,  # weights only before the logits move
        arch_optimizer=dict(type="Adam", lr=1e-3, betas=(0.5, 0.999), weight_decay=0.0),
    ),
    train=dict(
        policy="searched",  # searched (RUN_DIR/policy.json) | table2 | a policy.json path
        epochs=12,
    ),
)
