# CPU demo / test of the detection pipeline on a generated 8-image COCO-format fixture at 128 px:
#   mpq bpnas det-search -c tiny_coco && mpq bpnas det-train -c tiny_coco
# Not a paper row. model.backbone.depth=18 (with neck.in_channels=[64,128,256,512]) makes it faster.
_base_ = ["./faster_rcnn_r50_fpn_coco.py"]

image_size = (128, 128)
model = dict(
    backbone=dict(init_cfg=None),  # no ImageNet download on a CPU demo
    bpnas=dict(count_size=[128, 128]),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100)),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [dict(type="ConstantLR", factor=1.0, begin=0, end=1000, by_epoch=False)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
bpnas_run = dict(
    fixture=dict(n_train=8, n_val=4, width=160, height=128, seed=0),
    dataset="tiny_coco",
    search=dict(epochs=2, warmup_epochs=1, arch_optimizer=dict(lr=0.05)),
    train=dict(epochs=2),
)
