"""Feeds the policy node like a robot: both cameras, the robot state and a latched instruction, over real topics."""

import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, Header, String
from std_srvs.srv import SetBool

from ctr_vla_ros.nodes.image_conversion import rgb_to_image
from helpers.ros_harness import wait_until

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
NODE = '/ctr_vla_policy'


class Feed:
    """Publishes both cameras at 10 Hz and the robot state at 20 Hz; tests change what is published. The
    instruction goes out once on a latched publisher (like `ros2 topic pub --qos-durability transient_local`)."""

    def __init__(self, driver, primary, wrist, state, instruction):
        node = driver.node
        self.driver = driver
        self.primary, self.wrist, self.state = primary, wrist, state
        self.wrist_offset = 0.0
        self.cameras_on = [True, True]
        self.corrupt = None  # callable(image message) -> message, applied to the primary camera
        self.published_stamps = []
        self.clients = {}
        self.last_sent = [None, None]  # stamp (s) of each camera's newest frame sent
        self.camera_publishers = [node.create_publisher(Image, topic, qos_profile_sensor_data)
                                  for topic in ('/camera/primary/image_raw', '/camera/wrist/image_raw')]
        self.state_publisher = node.create_publisher(Float64MultiArray, '/robot_state', qos_profile_sensor_data)
        self.instruction_publisher = node.create_publisher(String, '/instruction', LATCHED)
        self.instruction_publisher.publish(String(data=instruction))
        node.create_timer(0.1, self.publish_cameras)
        node.create_timer(0.05, self.publish_state)

    def publish_cameras(self):
        now = self.driver.node.get_clock().now()
        header = Header(stamp=now.to_msg(), frame_id='primary_camera')
        primary = rgb_to_image(self.primary, header)
        if self.corrupt is not None:
            primary = self.corrupt(primary)
        wrist_time = rclpy.time.Time(nanoseconds=now.nanoseconds + int(self.wrist_offset * 1e9))
        wrist = rgb_to_image(self.wrist, Header(stamp=wrist_time.to_msg(), frame_id='wrist_camera'))
        for camera, (publisher, message) in enumerate(zip(self.camera_publishers, (primary, wrist))):
            if self.cameras_on[camera]:
                publisher.publish(message)
                self.last_sent[camera] = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9
        self.published_stamps.append((header.stamp.sec, header.stamp.nanosec))

    def publish_state(self):
        self.state_publisher.publish(Float64MultiArray(data=[float(value) for value in self.state]))

    def call(self, service_type, name, request):
        # One client per service, kept: a new client's first request can wait for discovery at the server.
        if name not in self.clients:
            self.clients[name] = self.driver.node.create_client(service_type, name)
        client = self.clients[name]
        assert client.wait_for_service(timeout_sec=20), f'{name} not available'
        future = client.call_async(request)
        wait_until(future.done, 20, f'{name} response')
        return future.result()

    def enable(self, on=True):
        assert self.call(SetBool, f'{NODE}/enable', SetBool.Request(data=on)).success
