# Supp. Table 2's published configuration trained directly (no search):
#   mpq bpnas det-train -c faster_rcnn_r50_fpn_coco_table2 data.root=/data/coco
_base_ = ["./faster_rcnn_r50_fpn_coco.py"]

bpnas_run = dict(table_row="table2/faster_rcnn_r50_fpn", train=dict(policy="table2"))
