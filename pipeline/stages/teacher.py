"""Train the teacher (stage teacher): a model on the original labels that then scores the training split,
the scores label enhancement thresholds (stage enhance). Its arguments are the train stage's, plus
--predict-features/--predict-out for the training split:

    python -m pipeline.stages.teacher --train-features data/features/train.h5 --val-features data/features/val.h5 \
        --weights data/weights/original.csv --stats data/features/stats.json --classes data/classes.csv \
        --out models/teacher --seed 0 --predict-features data/features/train.h5 \
        --predict-out data/predictions/teacher_train.npz

With `labels.enhance: none` no teacher is trained (pipeline.labels.plan): it writes a SKIPPED marker and
empty predictions in place of its outputs.
"""

from pipeline.stages import train


def main(argv=None):
    train.main(argv, role="teacher")


if __name__ == "__main__":
    main()
